-- The object kinds applications use, in one database (#30 item 15): what a backup must give back equal.
-- Run as the database's owner (an ordinary role, as an application is); the roles it names exist first.
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE EXTENSION IF NOT EXISTS citext;
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE EXTENSION IF NOT EXISTS ltree;

CREATE SCHEMA billing;
COMMENT ON SCHEMA billing IS 'invoices and their lines';

CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive_amount AS numeric(12, 2) CHECK (VALUE > 0);
CREATE DOMAIN email AS citext CHECK (VALUE ~ '^[^@]+@[^@]+$');
CREATE TYPE address AS (street text, city text, zip varchar(10));

CREATE TABLE every_type (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    small smallint, whole integer, big bigint, exact numeric(20, 6), approx real, precise double precision,
    price money, label varchar(40), code char(3), body text, blob bytea, flag boolean,
    day date, at_time time, at_timetz timetz, stamp timestamp, stamptz timestamptz, span interval,
    uid uuid DEFAULT gen_random_uuid(), doc json, docb jsonb, markup xml,
    ip inet, net cidr, mac macaddr, spot point, area box, ids int[], tags text[],
    period tsrange, counts int4range, words tsvector, bits bit(8), varbits bit varying(16),
    attrs hstore, contact email, path ltree, feeling mood, home address,
    twice integer GENERATED ALWAYS AS (whole * 2) STORED
);
COMMENT ON TABLE every_type IS 'one column of each common type';
COMMENT ON COLUMN every_type.twice IS 'generated from whole';
INSERT INTO every_type (small, whole, big, exact, approx, precise, price, label, code, body, blob, flag, day, at_time,
                        at_timetz, stamp, stamptz, span, doc, docb, markup, ip, net, mac, spot, area, ids, tags, period,
                        counts, words, bits, varbits, attrs, contact, path, feeling, home)
SELECT g::smallint, g, g * 1000000000::bigint, g / 7.0, g / 3.0, g / 11.0, g * 1.25, 'label ' || g, 'c' || (g % 10),
       repeat('body ', g % 5 + 1), decode(md5(g::text), 'hex'), g % 2 = 0, date '2026-01-01' + g, time '10:00' + g * interval '1 minute',
       timetz '10:00+02', timestamp '2026-01-01 00:00' + g * interval '1 hour', timestamptz '2026-01-01 00:00+00' + g * interval '1 day',
       g * interval '90 seconds', json_build_object('n', g), jsonb_build_object('n', g, 'even', g % 2 = 0),
       xmlparse(content '<v>' || g || '</v>'), ('10.0.0.' || g)::inet, '10.0.0.0/24', '08:00:2b:01:02:03',
       point(g, g * 2), box(point(0, 0), point(g, g)), ARRAY[g, g + 1], ARRAY['t' || g, 'u'],
       tsrange('2026-01-01', '2026-01-01'::timestamp + g * interval '1 day'), int4range(g, g + 10),
       to_tsvector('english', 'row number ' || g), (g % 256)::bit(8), B'1010', hstore('k', g::text),
       'user' || g || '@example.com', ('top.level' || g)::ltree, (ARRAY['sad', 'ok', 'happy'])[g % 3 + 1]::mood,
       ROW('street ' || g, 'city', '1000' || g)::address
FROM generate_series(1, 40) g;
INSERT INTO every_type (whole) VALUES (NULL);  -- NULLs everywhere else

CREATE TABLE billing.customers (
    id serial PRIMARY KEY, name text NOT NULL UNIQUE, contact email, tenant text NOT NULL DEFAULT 'a'
);
CREATE TABLE billing.invoices (
    id bigserial, customer_id integer NOT NULL REFERENCES billing.customers (id) ON DELETE CASCADE,
    issued date NOT NULL, total positive_amount NOT NULL, note text,
    PRIMARY KEY (id, issued)
) PARTITION BY RANGE (issued);
CREATE TABLE billing.invoices_2025 PARTITION OF billing.invoices FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE billing.invoices_2026 PARTITION OF billing.invoices FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE billing.invoices_other PARTITION OF billing.invoices DEFAULT;
CREATE INDEX invoices_by_customer ON billing.invoices (customer_id);
CREATE INDEX customers_lower_name ON billing.customers (lower(name));
CREATE INDEX invoices_unpaid ON billing.invoices (issued) WHERE note IS NULL;
INSERT INTO billing.customers (name, contact, tenant)
SELECT 'customer ' || g, 'c' || g || '@example.com', CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END FROM generate_series(1, 12) g;
INSERT INTO billing.invoices (customer_id, issued, total, note)
SELECT g % 12 + 1, date '2024-11-01' + g * 5, g * 3.5, CASE WHEN g % 3 = 0 THEN 'paid' END FROM generate_series(1, 200) g;

CREATE SEQUENCE ticket_numbers START 1000 INCREMENT 7;
SELECT setval('ticket_numbers', 4242, true);
CREATE SEQUENCE unused_numbers;
SELECT setval('unused_numbers', 17, false);

CREATE FUNCTION billing.customer_total(customer integer) RETURNS numeric LANGUAGE sql STABLE
    AS $$ SELECT coalesce(sum(total), 0) FROM billing.invoices WHERE customer_id = customer $$;
COMMENT ON FUNCTION billing.customer_total(integer) IS 'every invoice of a customer';
CREATE TABLE audit_log (id bigserial PRIMARY KEY, what text NOT NULL, at timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION log_invoice() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_log (what) VALUES (TG_OP || ' invoice ' || NEW.id);
    RETURN NEW;
END $$;
CREATE TRIGGER invoice_logged AFTER INSERT ON billing.invoices FOR EACH ROW EXECUTE FUNCTION log_invoice();
INSERT INTO billing.invoices (customer_id, issued, total) VALUES (1, '2026-06-01', 99.99);

CREATE VIEW billing.customer_totals AS
    SELECT c.id, c.name, billing.customer_total(c.id) AS total FROM billing.customers c;
CREATE MATERIALIZED VIEW billing.monthly AS
    SELECT date_trunc('month', issued)::date AS month, count(*) AS invoices, sum(total) AS total
    FROM billing.invoices GROUP BY 1;
CREATE UNIQUE INDEX monthly_month ON billing.monthly (month);
COMMENT ON MATERIALIZED VIEW billing.monthly IS 'refreshed nightly';

ALTER TABLE billing.customers ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON billing.customers TO fixture_reader USING (tenant = current_setting('app.tenant', true));
GRANT USAGE ON SCHEMA billing TO fixture_reader;
GRANT SELECT ON billing.customers, billing.customer_totals TO fixture_reader;

SELECT lo_from_bytea(0, convert_to('first large object', 'UTF8'));
SELECT lo_from_bytea(0, decode(repeat('00ff', 5000), 'hex'));
-- The backup role reads these by a grant on each (README 'What the backup roles may do').
DO $$ DECLARE o oid; BEGIN
    FOR o IN SELECT oid FROM pg_largeobject_metadata LOOP
        EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO continuity_backup', o);
    END LOOP;
END $$;
