"""The phase-1 schema. Timestamps are epoch milliseconds (BIGINT); opaque JSON is stored as text."""

SQL = """
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE policies (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    allowed_skill_keys TEXT NOT NULL,
    denied_skill_keys TEXT NOT NULL,
    allowed_provider_keys TEXT NOT NULL,
    denied_provider_keys TEXT NOT NULL,
    budget_cap_currency TEXT,
    budget_cap_amount {money},
    region_rules TEXT NOT NULL,
    native_only INTEGER NOT NULL,
    handoff_allowed INTEGER NOT NULL,
    required_capabilities TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX policies_page ON policies (created_at, id);

CREATE TABLE machines (
    id TEXT PRIMARY KEY,
    display_name TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    machine_type TEXT NOT NULL,
    runtime_profile TEXT NOT NULL,
    status TEXT NOT NULL,
    identity_ref TEXT,
    identity_proof TEXT,
    identity_attestation TEXT,
    capabilities TEXT NOT NULL,
    labels TEXT NOT NULL,
    policy_ids TEXT NOT NULL,
    skill_keys TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX machines_page ON machines (created_at, id);
CREATE UNIQUE INDEX machines_identity_ref ON machines (identity_ref)
    WHERE identity_ref IS NOT NULL AND status <> 'archived';

-- Which machines name which policy: lets the database refuse deleting a policy in use.
CREATE TABLE machine_policies (
    machine_id TEXT NOT NULL REFERENCES machines (id),
    policy_id TEXT NOT NULL REFERENCES policies (id),
    PRIMARY KEY (machine_id, policy_id)
);
CREATE INDEX machine_policies_policy ON machine_policies (policy_id);

CREATE TABLE identity_challenges (
    id TEXT PRIMARY KEY,
    identity_ref TEXT NOT NULL,
    message TEXT NOT NULL,
    controller_addresses TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    consumed_at BIGINT
);
CREATE INDEX identity_challenges_expiry ON identity_challenges (expires_at);

CREATE TABLE machine_agents (
    id TEXT PRIMARY KEY,
    machine_id TEXT NOT NULL REFERENCES machines (id),
    label TEXT NOT NULL,
    allowed_provider_keys TEXT NOT NULL,
    status TEXT NOT NULL,
    token_digest TEXT NOT NULL,
    token_issued_at BIGINT NOT NULL,
    last_seen_at BIGINT,
    last_sequence BIGINT,
    last_lease_seconds INTEGER,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX machine_agents_page ON machine_agents (machine_id, created_at, id);

CREATE TABLE runtime_endpoints (
    id TEXT PRIMARY KEY,
    machine_id TEXT NOT NULL REFERENCES machines (id),
    provider_key TEXT NOT NULL,
    source TEXT NOT NULL,
    label TEXT NOT NULL,
    endpoint_base_url TEXT NOT NULL,
    auth_type TEXT NOT NULL,
    auth_token_enc TEXT,
    network_scope TEXT NOT NULL,
    probe_path TEXT NOT NULL,
    model_alias TEXT,
    status TEXT NOT NULL,
    agent_id TEXT,
    lease_expires_at BIGINT,
    last_checked_at BIGINT,
    last_healthy_at BIGINT,
    health_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (machine_id, provider_key)
);
CREATE INDEX runtime_endpoints_page ON runtime_endpoints (machine_id, created_at, id);
CREATE INDEX runtime_endpoints_agent ON runtime_endpoints (agent_id);
CREATE INDEX runtime_endpoints_lease ON runtime_endpoints (lease_expires_at)
    WHERE source = 'agent' AND status <> 'unreachable';

CREATE TABLE graph_nodes (
    id TEXT PRIMARY KEY,
    machine_id TEXT NOT NULL REFERENCES machines (id),
    kind TEXT NOT NULL,
    key TEXT,
    label TEXT NOT NULL,
    status TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (machine_id, kind, key)
);
CREATE INDEX graph_nodes_page ON graph_nodes (machine_id, created_at, id);

CREATE TABLE graph_edges (
    id TEXT PRIMARY KEY,
    machine_id TEXT NOT NULL REFERENCES machines (id),
    from_node_id TEXT NOT NULL REFERENCES graph_nodes (id),
    to_node_id TEXT NOT NULL REFERENCES graph_nodes (id),
    kind TEXT NOT NULL,
    label TEXT,
    status TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (from_node_id, to_node_id, kind)
);
CREATE INDEX graph_edges_page ON graph_edges (machine_id, created_at, id);
CREATE INDEX graph_edges_to ON graph_edges (to_node_id);

CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    machine_id TEXT NOT NULL REFERENCES machines (id),
    order_id TEXT,
    skill_key TEXT,
    service_type TEXT,
    service_id TEXT,
    operation TEXT NOT NULL,
    input TEXT NOT NULL,
    requirements TEXT NOT NULL,
    budget_present INTEGER NOT NULL,
    budget_amount {money},
    budget_currency TEXT,
    status TEXT NOT NULL,
    candidates TEXT NOT NULL,
    route_id TEXT,
    run_id TEXT,
    outcome_id TEXT,
    error_message TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX tasks_page ON tasks (machine_id, created_at, id);

CREATE TABLE routes (
    id TEXT PRIMARY KEY,
    machine_id TEXT NOT NULL REFERENCES machines (id),
    task_id TEXT NOT NULL REFERENCES tasks (id),
    order_id TEXT,
    service_id TEXT NOT NULL,
    skill_key TEXT NOT NULL,
    provider_key TEXT NOT NULL,
    operation TEXT NOT NULL,
    runtime_endpoint_id TEXT,
    execution_mode TEXT NOT NULL,
    integration_status TEXT NOT NULL,
    status TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    reasons TEXT NOT NULL,
    handoff TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX routes_page ON routes (machine_id, created_at, id);
CREATE INDEX routes_task ON routes (task_id);

CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    machine_id TEXT NOT NULL REFERENCES machines (id),
    task_id TEXT NOT NULL REFERENCES tasks (id),
    route_id TEXT NOT NULL REFERENCES routes (id),
    order_id TEXT,
    status TEXT NOT NULL,
    execution_mode TEXT NOT NULL,
    skill_key TEXT NOT NULL,
    service_id TEXT NOT NULL,
    provider_key TEXT NOT NULL,
    operation TEXT NOT NULL,
    runtime_endpoint_id TEXT,
    attempt INTEGER NOT NULL,
    http_status INTEGER,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    duration_ms BIGINT,
    error_message TEXT,
    outcome_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX runs_page ON runs (machine_id, created_at, id);
CREATE INDEX runs_task ON runs (task_id);
CREATE INDEX runs_running ON runs (status, started_at);

CREATE TABLE outcomes (
    id TEXT PRIMARY KEY,
    machine_id TEXT NOT NULL REFERENCES machines (id),
    task_id TEXT NOT NULL REFERENCES tasks (id),
    run_id TEXT NOT NULL REFERENCES runs (id),
    route_id TEXT NOT NULL REFERENCES routes (id),
    order_id TEXT,
    status TEXT NOT NULL,
    skill_key TEXT NOT NULL,
    service_id TEXT NOT NULL,
    execution_mode TEXT NOT NULL,
    result TEXT,
    error_message TEXT,
    external_ref TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX outcomes_page ON outcomes (machine_id, created_at, id);

CREATE TABLE audit_events (
    id TEXT PRIMARY KEY,
    actor TEXT NOT NULL,
    type TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    machine_id TEXT,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX audit_events_page ON audit_events (created_at, id);
CREATE INDEX audit_events_machine ON audit_events (machine_id, created_at, id);
CREATE INDEX audit_events_resource ON audit_events (resource_id, created_at, id);

-- One row: the sweeper's shared memory across restarts and replicas (SPEC §7).
CREATE TABLE sweeper_state (
    id INTEGER PRIMARY KEY,
    last_sweep_at BIGINT,
    episode_started_at BIGINT,
    episode_open INTEGER NOT NULL,
    consecutive_suspensions INTEGER NOT NULL
);
INSERT INTO sweeper_state (id, last_sweep_at, episode_started_at, episode_open, consecutive_suspensions)
VALUES (1, NULL, NULL, 0, 0);
"""
