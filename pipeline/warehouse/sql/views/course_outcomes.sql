-- The courses of v_course_outcomes that start within [date_from, date_to] (NULL: open) at a facility (NULL: every one)
CREATE OR REPLACE MACRO course_outcomes(date_from, date_to, facility_name) AS TABLE
SELECT * FROM v_course_outcomes
WHERE (date_from IS NULL OR start_date >= CAST(date_from AS DATE))
  AND (date_to IS NULL OR start_date <= CAST(date_to AS DATE))
  AND (facility_name IS NULL OR facility = facility_name);
