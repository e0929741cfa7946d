-- Courses per ordering service: appropriate share, total and excess grams
CREATE OR REPLACE VIEW v_summary_by_service AS SELECT service AS service,
    CAST(COUNT(*) AS BIGINT) AS courses,
    CAST(COUNT(DISTINCT patient_id) AS BIGINT) AS patients,
    CAST(COUNT(*) FILTER (WHERE appropriate) AS BIGINT) AS appropriate_courses,
    CAST(100.0 * COUNT(*) FILTER (WHERE appropriate) / COUNT(*) AS DOUBLE) AS pct_appropriate,
    CAST(SUM(total_g) AS DOUBLE) AS total_g,
    CAST(SUM(excess_g) AS DOUBLE) AS excess_g FROM courses GROUP BY ALL ORDER BY service NULLS LAST;
