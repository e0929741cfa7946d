-- course_summary per month over the whole history
CREATE OR REPLACE VIEW v_summary_by_month AS SELECT * FROM course_summary('month', NULL, NULL, NULL);
