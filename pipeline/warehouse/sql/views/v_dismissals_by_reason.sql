-- Dismissed findings per category and disposition code
CREATE OR REPLACE VIEW v_dismissals_by_reason AS
WITH latest AS (
    SELECT finding_id, arg_max(status, event_id) AS status, arg_max(reason_code, event_id) AS reason_code
    FROM review_events GROUP BY finding_id
)
SELECT f.category, l.reason_code, CAST(COUNT(*) AS BIGINT) AS dismissed
FROM latest AS l JOIN findings AS f USING (finding_id)
WHERE l.status = 'dismissed' GROUP BY ALL ORDER BY dismissed DESC;
