-- course_summary per indication over the whole history
CREATE OR REPLACE VIEW v_summary_by_indication AS SELECT * FROM course_summary('indication', NULL, NULL, NULL);
