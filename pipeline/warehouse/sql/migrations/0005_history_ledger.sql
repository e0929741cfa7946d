-- 5: the history ledger (rows keyed on what they are, versions of orders, every patient's evidence),
-- lasting course and finding ids, the run sequence, the finding history and pack versions.
-- Tables and columns the catalog declares exist already (the catalog's sync runs first); this file
-- moves the data of a database written before version 5. `-- python: <step>` runs a step of
-- pipeline/warehouse/schema.py (MIGRATION_STEPS) at that point.

UPDATE runs SET seq = n.seq FROM (
    SELECT run_id, row_number() OVER (ORDER BY started_at, run_id) AS seq FROM runs) AS n
WHERE runs.run_id = n.run_id;

-- python: ledger_from_source_rows

-- Lasting ids (pipeline/domain/identity.py): a course is named by a digest of its patient, indication
-- group and the order of its first dose; a finding by its course (or order) and rule.
CREATE TEMP TABLE course_id_map AS
SELECT c.course_id AS old_id,
       'crs-' || substr(sha256(c.patient_id || chr(31) || c.indication_group || chr(31)
           || COALESCE(first(o.order_id ORDER BY o.start, o.order_id), c.course_id)), 1, 12) AS new_id
FROM courses AS c LEFT JOIN orders AS o ON o.course_id = c.course_id
GROUP BY c.course_id, c.patient_id, c.indication_group;

CREATE TEMP TABLE finding_id_map AS
SELECT f.finding_id AS old_id, m.new_id AS course_id,
       CASE WHEN f.course_id IS NULL
            THEN 'ord-' || substr(sha256(f.patient_id || chr(31) || COALESCE(f.order_ids, '')), 1, 12)
            ELSE COALESCE(m.new_id, f.course_id) END || '.' || f.rule_id AS new_id
FROM findings AS f LEFT JOIN course_id_map AS m ON m.old_id = f.course_id;

UPDATE orders SET course_id = m.new_id FROM course_id_map AS m WHERE orders.course_id = m.old_id;
UPDATE courses SET course_id = m.new_id FROM course_id_map AS m WHERE courses.course_id = m.old_id;
UPDATE review_events SET finding_id = m.new_id FROM finding_id_map AS m WHERE review_events.finding_id = m.old_id;
UPDATE findings SET finding_id = m.new_id, course_id = m.course_id
FROM finding_id_map AS m WHERE findings.finding_id = m.old_id;
DROP TABLE course_id_map;
DROP TABLE finding_id_map;

UPDATE findings SET
    raised_pack_version = (SELECT r.rule_pack_version FROM runs AS r WHERE r.run_id = findings.first_seen_run),
    confirmed_pack_version = (SELECT r.rule_pack_version FROM runs AS r WHERE r.run_id = findings.last_seen_run);
UPDATE findings SET facts_hash = finding_facts_hash(severity, expected, observed, excess_g, order_ids);
UPDATE findings SET reviewed_facts_hash = facts_hash WHERE status <> 'open';

INSERT INTO finding_history (run_id, finding_id, change, rule_version, pack_version, severity, expected, observed, excess_g, message)
SELECT first_seen_run, finding_id, 'raised', rule_version, raised_pack_version, severity, expected,
       observed, excess_g, message FROM findings;
INSERT INTO finding_history (run_id, finding_id, change, rule_version, pack_version, severity, expected, observed, excess_g, message)
SELECT resolved_run, finding_id, 'resolved', rule_version, confirmed_pack_version, severity, expected,
       observed, excess_g, message FROM findings WHERE resolved_run IS NOT NULL
ON CONFLICT DO NOTHING;

-- Quarantine rows belong to the run that saw them: keyed by run (the catalog's key), never replaced by a later run.
-- python: rebuild quarantine
