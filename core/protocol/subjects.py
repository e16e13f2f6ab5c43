"""Every NATS name hvmesh uses: subjects, streams, buckets, object stores, services, durables.

Nothing else in hvmesh spells a subject or stream name; it imports it from here, so this
module is the map of the wire (docs/architecture.md draws the same map).
"""

from __future__ import annotations

# --- request/reply -------------------------------------------------------------------------

API_PREFIX = "hvmesh.api"
API_ALL = f"{API_PREFIX}.>"  # what tenant accounts import from the HVMESH account
SCHED_SELECT = "hvmesh.sched.select"  # the scheduler service's one endpoint


def api(resource: str, verb: str) -> str:
    """hvmesh.api.<resource>.<verb>: one endpoint of the API service."""
    return f"{API_PREFIX}.{resource}.{verb}"


def agent(host: str, op: str) -> str:
    """hvmesh.agent.<host>.<op>: a quick request to one host's agent (console log, ...)."""
    return f"hvmesh.agent.{host}.{op}"


# --- streams and their subjects --------------------------------------------------------------

TASKS_STREAM = "HVMESH_TASKS"  # conductor work queue
TASKS_ALL = "hvmesh.tasks.>"
TIMERS_STREAM = "HVMESH_TIMERS"  # conductor timers, due at not_before
TIMERS_ALL = "hvmesh.timers.>"
NOTIFY_STREAM = "HVMESH_NOTIFICATIONS"  # versioned notifications for outside consumers
NOTIFY_ALL = "hvmesh.notify.>"
WORK_STREAM = "HVMESH_WORK"  # per-host agent work
WORK_ALL = "hvmesh.work.>"
EVENTS_STREAM = "HVMESH_EVENTS"  # agents' progress and power-state events
EVENTS_ALL = "hvmesh.events.>"


def task(kind: str) -> str:
    """hvmesh.tasks.<kind>: one conductor task (build, delete, ...)."""
    return f"hvmesh.tasks.{kind}"


def timer(name: str) -> str:
    """hvmesh.timers.<name>: one conductor timer."""
    return f"hvmesh.timers.{name}"


def notify(event_type: str) -> str:
    """hvmesh.notify.<event_type>: a versioned notification."""
    return f"hvmesh.notify.{event_type}"


def work(host: str, group: str = "") -> str:
    """hvmesh.work.<host>: durable work for one host's agent; hvmesh.work.<group>.<host>
    for a host whose agent process takes its group's work from one consumer."""
    return f"hvmesh.work.{group}.{host}" if group else f"hvmesh.work.{host}"


def group_work(group: str) -> str:
    """hvmesh.work.<group>.*: the work of every host of one group."""
    return f"hvmesh.work.{group}.*"


def events(host: str, server_id: str) -> str:
    """hvmesh.events.<host>.<server>: an agent's event about one server."""
    return f"hvmesh.events.{host}.{server_id}"


# --- durable consumers -----------------------------------------------------------------------

CONDUCTOR_TASKS_DURABLE = "conductor"
CONDUCTOR_EVENTS_DURABLE = "conductor-events"
CONDUCTOR_TIMERS_DURABLE = "conductor-timers"


def agent_durable(host: str) -> str:
    """The durable consumer on HVMESH_WORK of one host's agent."""
    return f"agent-{host}"


def group_durable(group: str) -> str:
    """The durable consumer on HVMESH_WORK of one group of an agent process's hosts."""
    return f"agents-{group}"


# --- micro services --------------------------------------------------------------------------

API_SERVICE = "hvmesh-api"
SCHEDULER_SERVICE = "hvmesh-scheduler"

# --- KV buckets and object stores ------------------------------------------------------------
# Short names so `nats kv get servers <id>` reads well.

SERVERS_BUCKET = "servers"
HOSTS_BUCKET = "hosts"
FLAVORS_BUCKET = "flavors"
IMAGES_BUCKET = "images"
HEARTBEATS_BUCKET = "heartbeats"
SERVER_GROUPS_BUCKET = "server_groups"
AGGREGATES_BUCKET = "aggregates"
SERVER_ACTIONS_BUCKET = "server_actions"  # key "<server id>.<request id>"
NETWORKS_BUCKET = "networks"
PORTS_BUCKET = "ports"
KEYPAIRS_BUCKET = "keypairs"
IMAGE_STORE = "image_data"  # object store of image bytes, one object per image id

# --- dead letters ----------------------------------------------------------------------------

DEAD_LETTERS_STREAM = "HVMESH_DEAD_LETTERS"  # copies of messages given up on, for inspection
DEAD_LETTERS_ALL = "hvmesh.dead.>"


def dead_letter(component: str) -> str:
    """hvmesh.dead.<component>: a message `component` gave up on (conductor-tasks, agent-<host>)."""
    return f"hvmesh.dead.{component}"


# --- placement leases and unique names ---------------------------------------------------------

PLACEMENT_LEASES_BUCKET = "placement_leases"  # key: a RequestSpec's claim_key
NAMES_BUCKET = "names"  # key "<kind>.<digest of the scope and name>": who holds a unique name

# --- quotas and usage ---------------------------------------------------------------------------

QUOTAS_BUCKET = "quotas"  # key: a project's key (quota_records.project_key): its overrides
QUOTA_USAGE_BUCKET = "quota_usage"  # same key: what the project holds, per holder
MIGRATIONS_BUCKET = "migrations"  # key: a move's (Migration's) id: its record, kept after it ends
USAGE_LEDGER_BUCKET = "usage_ledger"  # key "<project key>.<server id>": a deleted server's run

# --- tenant discovery and notifications, idempotent creates ------------------------------------

# Notifications go out on hvmesh.notify.<project>.<event_type> (the stream NOTIFY_STREAM
# takes them all through NOTIFY_ALL). nats.conf exports hvmesh.notify.*.> with
# account_token_position 3, so a tenant account imports its own project's only.
NOTIFY_PROJECT_TOKEN = 3


def project_notify(project: str, event_type: str) -> str:
    """hvmesh.notify.<project>.<event_type>: a versioned notification about a project's server."""
    return f"hvmesh.notify.{project}.{event_type}"


# Tenant accounts import the API service's $SRV.PING and $SRV.INFO, by name and by
# instance (not STATS: its counters are every project's traffic); `hvmesh api schema`
# reads the endpoints' schemas from INFO.
API_INFO = f"$SRV.INFO.{API_SERVICE}"

CLIENT_TOKENS_BUCKET = "client_tokens"  # key: digest of (project, client_token): a create's reply

# --- console sessions (core/protocol/consoles.py) ------------------------------------------------

CONSOLE_TOKENS_BUCKET = "console_tokens"  # key: SHA-256 of a console token: its ConsoleToken
CONSOLE_OPEN = "console_open"  # the agent op (hvmesh.agent.<host>.console_open) opening one


def console_in(host: str, session: str) -> str:
    """hvmesh.agent.<host>.console_<session>: a console session's bytes towards the agent."""
    return agent(host, f"console_{session}")


def console_out(host: str, session: str) -> str:
    """hvmesh.console.<host>.<session>: a console session's bytes from the agent."""
    return f"hvmesh.console.{host}.{session}"


# --- agents' own NATS users ----------------------------------------------------------------------


def agent_inbox(name: str) -> str:
    """_INBOX.agent-<name>: the reply subjects of an agent's own NATS user ([nats] inbox_prefix).

    The dash keeps it apart from every other client's _INBOX.<nuid> (a nuid has none).
    """
    return f"_INBOX.agent-{name}"


# --- sites (docs/sites.md) ------------------------------------------------------------------------
# The core's JetStream domain is CORE_DOMAIN; a site's is its name. A JetStream domain's
# API is $JS.<domain>.API from anywhere in the leaf-node topology.

CORE_DOMAIN = "core"
SITES_BUCKET = "sites"  # key: a site's name: its Site record (at the core)
SITE_REQUESTS_STREAM = "HVMESH_SITE_REQUESTS"  # at the core: creates the core handed to a site
SITE_REQUESTS_ALL = "hvmesh.site_requests.>"
SITE_INBOX_STREAM = "HVMESH_SITE_INBOX"  # at a site: its requests, sourced from the core's
SITE_INBOX_DURABLE = "site-inbox"
SITE_OUTCOMES_BUCKET = "site_outcomes"  # at the core; key: a SiteRequest's id: why it failed
# A site's requests to the core, answered by the core's API: outside hvmesh.> so that
# they cross the link (SITE_LINK_DENY).
SITE_JOIN = "hvmesh-site.join"
SITE_OUTCOME = "hvmesh-site.outcome"
# What a site's leaf-node link does not carry, either way: each side has its own services,
# buckets ($KV), object stores ($O) and service discovery. Only JetStream's API
# ($JS.<domain>.API), replies (_INBOX) and stream sourcing/mirroring cross.
SITE_LINK_DENY = ("hvmesh.>", "$KV.>", "$O.>", "$SRV.>")


def site_requests(site: str) -> str:
    """hvmesh.site_requests.<site>: a create the core accepted for one site."""
    return f"hvmesh.site_requests.{site}"


def js_api(domain: str) -> str:
    """$JS.<domain>.API: the JetStream API of one domain (the core's, or a site's)."""
    return f"$JS.{domain}.API"


def site_view(site: str) -> str:
    """HVMESH_SITE_<site>_SERVERS: the core's mirror of one site's servers bucket."""
    return f"HVMESH_SITE_{site}_SERVERS"


def kv_stream(bucket: str) -> str:
    """KV_<bucket>: the stream behind a KV bucket."""
    return f"KV_{bucket}"
