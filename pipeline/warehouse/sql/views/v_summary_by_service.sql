-- course_summary per service over the whole history
CREATE OR REPLACE VIEW v_summary_by_service AS SELECT * FROM course_summary('service', NULL, NULL, NULL);
