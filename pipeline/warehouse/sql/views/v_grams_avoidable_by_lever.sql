-- lever_summary over the whole history, priced at the latest run's cost per gram
CREATE OR REPLACE VIEW v_grams_avoidable_by_lever AS
SELECT * FROM lever_summary(NULL, NULL, NULL,
    (SELECT cost_per_gram FROM runs WHERE cost_per_gram IS NOT NULL ORDER BY started_at DESC LIMIT 1));
