-- 6: each finding says whether it makes its course inappropriate (findings.counts_against_course, set by
-- the audit from then on). Findings stored before carry the audit's rule of version 5: a warning or
-- critical finding of a course counts against it.
UPDATE findings SET counts_against_course = (severity <> 'info' AND course_id IS NOT NULL);
UPDATE scenario_findings SET counts_against_course = (severity <> 'info' AND course_id IS NOT NULL);
