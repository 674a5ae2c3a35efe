"""Initial schema: pools, tenants, tokens, racks, hosts, networks, subnets, blocks,
endpoints, addresses, rules, fabric, events.

Written by hand: the exclusion constraints need the `inet_ops` GiST operator class,
which autogenerate drops.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
CREATE SEQUENCE terrace_revision;

CREATE TABLE pools (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    cidr cidr NOT NULL,
    family smallint NOT NULL CHECK (family IN (4, 6)),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pools_no_overlap EXCLUDE USING gist (cidr inet_ops WITH &&)
);

CREATE TABLE tenants (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name varchar(64) NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE racks (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name varchar(64) NOT NULL UNIQUE,
    asn bigint UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE hosts (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name varchar(64) NOT NULL UNIQUE,
    rack_id uuid NOT NULL REFERENCES racks(id) ON DELETE RESTRICT,
    -- deferred: re-applying a fabric may renumber hosts within one transaction
    asn bigint NOT NULL CONSTRAINT hosts_asn_key UNIQUE DEFERRABLE INITIALLY DEFERRED,
    address inet NOT NULL,
    address6 inet,
    peers jsonb NOT NULL DEFAULT '[]'::jsonb,
    revision bigint NOT NULL DEFAULT 0,
    status jsonb NOT NULL DEFAULT '{}'::jsonb,
    status_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tokens (
    token_hash varchar(64) PRIMARY KEY,
    kind varchar(8) NOT NULL CHECK (kind IN ('tenant', 'host')),
    tenant_id uuid REFERENCES tenants(id) ON DELETE CASCADE,
    host_id uuid REFERENCES hosts(id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE networks (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id uuid NOT NULL REFERENCES tenants(id) ON DELETE RESTRICT,
    name varchar(64) NOT NULL,
    auto_grow boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT networks_tenant_name_key UNIQUE (tenant_id, name)
);

CREATE TABLE subnets (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    network_id uuid NOT NULL REFERENCES networks(id) ON DELETE RESTRICT,
    pool_id uuid NOT NULL REFERENCES pools(id) ON DELETE RESTRICT,
    cidr cidr NOT NULL,
    family smallint NOT NULL CHECK (family IN (4, 6)),
    block_prefix_length smallint NOT NULL,
    rack_prefix_length smallint,
    auto boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT subnets_no_overlap EXCLUDE USING gist (cidr inet_ops WITH &&),
    CONSTRAINT subnets_block_inside CHECK (block_prefix_length >= masklen(cidr)),
    CONSTRAINT subnets_rack_between CHECK (
        rack_prefix_length IS NULL
        OR (rack_prefix_length >= masklen(cidr) AND rack_prefix_length <= block_prefix_length)
    )
);
CREATE INDEX subnets_network_id ON subnets (network_id);

CREATE TABLE blocks (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    subnet_id uuid NOT NULL REFERENCES subnets(id) ON DELETE RESTRICT,
    host_id uuid NOT NULL REFERENCES hosts(id) ON DELETE RESTRICT,
    cidr cidr NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT blocks_no_overlap EXCLUDE USING gist (cidr inet_ops WITH &&)
);
CREATE INDEX blocks_subnet_id ON blocks (subnet_id);
CREATE INDEX blocks_host_id ON blocks (host_id);

CREATE TABLE endpoints (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    network_id uuid NOT NULL REFERENCES networks(id) ON DELETE RESTRICT,
    host_id uuid NOT NULL REFERENCES hosts(id) ON DELETE RESTRICT,
    name varchar(128) NOT NULL,
    netns varchar(255),
    interface varchar(15),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT endpoints_host_name_key UNIQUE (host_id, name)
);
CREATE INDEX endpoints_network_id ON endpoints (network_id);
CREATE INDEX endpoints_host_id ON endpoints (host_id);

CREATE TABLE addresses (
    address inet PRIMARY KEY,
    family smallint NOT NULL,
    endpoint_id uuid NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
    subnet_id uuid NOT NULL REFERENCES subnets(id) ON DELETE RESTRICT,
    block_id uuid REFERENCES blocks(id) ON DELETE RESTRICT,
    CONSTRAINT addresses_one_per_family UNIQUE (endpoint_id, family)
);
CREATE INDEX addresses_endpoint_id ON addresses (endpoint_id);
CREATE INDEX addresses_block_id ON addresses (block_id);
CREATE INDEX addresses_address_gist ON addresses USING gist (address inet_ops);

CREATE TABLE rules (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    network_id uuid NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
    from_network uuid REFERENCES networks(id) ON DELETE CASCADE,
    from_cidr cidr,
    protocol varchar(8) NOT NULL,
    ports jsonb NOT NULL DEFAULT '[]'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT rules_one_source CHECK ((from_network IS NULL) <> (from_cidr IS NULL))
);
CREATE INDEX rules_network_id ON rules (network_id);
CREATE INDEX rules_from_network ON rules (from_network);

CREATE TABLE fabric (
    id integer PRIMARY KEY,
    topology text NOT NULL,
    model jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE events (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    kind varchar(32) NOT NULL,
    action varchar(32) NOT NULL,
    object_id varchar(64),
    tenant_id uuid,
    revision bigint,
    summary text NOT NULL
);
"""

DOWNGRADE = """
DROP TABLE events, fabric, rules, addresses, endpoints, blocks, subnets, networks,
    tokens, hosts, racks, tenants, pools;
DROP SEQUENCE terrace_revision;
"""


def _run(script: str) -> None:
    # asyncpg prepares each statement: one command per execute.
    for statement in script.split(";\n"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _run(UPGRADE)


def downgrade() -> None:
    _run(DOWNGRADE)
