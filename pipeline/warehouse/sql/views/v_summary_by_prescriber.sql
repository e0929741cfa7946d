-- course_summary per prescriber over the whole history
CREATE OR REPLACE VIEW v_summary_by_prescriber AS SELECT * FROM course_summary('prescriber', NULL, NULL, NULL);
