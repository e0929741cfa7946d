-- 7: a ledger version is an object of the columns its row fills: a column it leaves blank is no longer a
-- null member of the text (the text of a typical order was 2.3 times longer). Stored versions are
-- rewritten as the audit now writes them, with their content numbers, so a row sent again after the
-- upgrade is a version the ledger knows (not a second version of its order, nor a second lab result).

-- python: ledger_versions_without_nulls
