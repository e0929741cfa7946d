-- Courses per month of start and indication: appropriate share, total and excess grams
CREATE OR REPLACE VIEW v_appropriateness_by_indication_month AS
SELECT CAST(date_trunc('month', start) AS DATE) AS month, indication,
    CAST(COUNT(*) AS BIGINT) AS courses,
    CAST(COUNT(DISTINCT patient_id) AS BIGINT) AS patients,
    CAST(COUNT(*) FILTER (WHERE appropriate) AS BIGINT) AS appropriate_courses,
    CAST(100.0 * COUNT(*) FILTER (WHERE appropriate) / COUNT(*) AS DOUBLE) AS pct_appropriate,
    CAST(SUM(total_g) AS DOUBLE) AS total_g,
    CAST(SUM(excess_g) AS DOUBLE) AS excess_g
FROM courses GROUP BY ALL ORDER BY month, indication;
