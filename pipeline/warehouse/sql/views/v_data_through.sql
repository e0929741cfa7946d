-- The day the data runs to (the newest order the history holds, else the newest course day) and the first course start
CREATE OR REPLACE VIEW v_data_through AS
SELECT COALESCE(
           (SELECT CAST(MAX(event_at) AS DATE) FROM ledger WHERE extract = 'orders'),
           (SELECT CAST(MAX(COALESCE("end", start)) AS DATE) FROM courses)) AS data_through,
       (SELECT CAST(MIN(start) AS DATE) FROM courses) AS data_from;
