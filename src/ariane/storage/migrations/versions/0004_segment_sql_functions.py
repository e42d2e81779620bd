"""ariane_moment(text): the timestamp a trait holds, for segment conditions compiled to SQL

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24

On PostgreSQL only: SQLite gets the same function from the application on each
connection. It reads exactly the texts `predicates.parse_moment` reads and returns
microseconds since the Unix epoch, or NULL.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

MOMENT = r"""
CREATE FUNCTION ariane_moment(value text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $function$
DECLARE
    part text[];
    year int;
    month int;
    day int;
    hour int;
    minute int;
    second int;
    last_day int;
    zone_hours int;
    zone_minutes int;
    result bigint;
BEGIN
    part := regexp_match(
        value,
        '^([0-9]{4})-([0-9]{2})-([0-9]{2})'
        '(?:[T ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?)?'
        '(Z|[+-][0-9]{2}:[0-9]{2})?$'
    );
    IF part IS NULL THEN
        RETURN NULL;
    END IF;
    year := part[1]::int;
    month := part[2]::int;
    day := part[3]::int;
    hour := coalesce(part[4], '0')::int;
    minute := coalesce(part[5], '0')::int;
    second := coalesce(part[6], '0')::int;
    IF year < 1 OR month < 1 OR month > 12 OR day < 1
        OR hour > 23 OR minute > 59 OR second > 59 THEN
        RETURN NULL;
    END IF;
    -- Assigned first: in an IF, plpgsql would end the condition at the CASE's THEN.
    last_day := CASE
        WHEN month = 2 AND mod(year, 4) = 0 AND (mod(year, 100) <> 0 OR mod(year, 400) = 0)
            THEN 29
        WHEN month = 2 THEN 28
        WHEN month IN (4, 6, 9, 11) THEN 30
        ELSE 31
    END;
    IF day > last_day THEN
        RETURN NULL;
    END IF;
    result := ((((make_date(year, month, day) - DATE '1970-01-01')::bigint * 24 + hour) * 60
        + minute) * 60 + second) * 1000000 + rpad(coalesce(part[7], ''), 6, '0')::bigint;
    IF part[8] IS NOT NULL AND part[8] <> 'Z' THEN
        zone_hours := substr(part[8], 2, 2)::int;
        zone_minutes := substr(part[8], 5, 2)::int;
        IF zone_hours > 23 OR zone_minutes > 59 THEN
            RETURN NULL;
        END IF;
        IF left(part[8], 1) = '+' THEN
            result := result - (zone_hours * 60 + zone_minutes)::bigint * 60000000;
        ELSE
            result := result + (zone_hours * 60 + zone_minutes)::bigint * 60000000;
        END IF;
    END IF;
    -- From 0001-01-01T00:00:00 to 9999-12-31T23:59:59.999999, UTC, as Python's datetime.
    IF result < -62135596800000000 OR result > 253402300799999999 THEN
        RETURN NULL;
    END IF;
    RETURN result;
END
$function$
"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # Straight to the driver: the body holds colons that text() would read as binds.
        bind.exec_driver_sql(MOMENT)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION ariane_moment(text)")
