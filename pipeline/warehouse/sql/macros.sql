-- Scalar macros the tables' writers, the migrations and the views share (one definition each).

-- What makes a finding's facts differ: a reviewed finding whose facts change is marked changed since review.
CREATE OR REPLACE MACRO finding_facts_hash(severity, expected, observed, excess_g, order_ids) AS
    sha256(concat_ws(chr(31), severity, COALESCE(expected, ''), COALESCE(observed, ''),
                     CAST(round(excess_g, 3) AS VARCHAR), COALESCE(order_ids, '')));
