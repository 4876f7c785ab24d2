"""Settings: environment variables `IMCONNECTOR_…` (nested with `__`) over an optional YAML file.

Validated at start; `load_settings` turns any problem into a one-line `ConfigError` that
names the setting and the fix. Secrets are `SecretStr` and `masked_dump` hides them.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)
from pydantic_settings.sources import NestedSecretsSettingsSource

from consumer.errors import ConfigError
from consumer.settings_names import ENV_PREFIX, describe_error, unknown_names

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Kafka's legal topic (and, here, group) names: the group id is part of topic names.
_KAFKA_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")
# librdkafka's _RK_SENSITIVE properties (rdkafka_conf.c) and anything named like them.
_SECRET_KEY = re.compile(
    r"(password|secret|passphrase|\.pem$|^ssl_key$|^sasl\.oauthbearer\.config$)"
)
_STRICT = ConfigDict(extra="forbid")  # a typo in the YAML file is an error, not a default


def _check_url(value: str, what: str, *, allow_loopback_http: bool = True) -> str:
    """A Bitrix24 URL: https, or http on loopback only (the simulator)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} {value!r} is not an absolute http(s) URL")
    if parts.scheme == "http" and not (allow_loopback_http and parts.hostname in _LOOPBACK):
        raise ValueError(f"{what} {value!r} must use https (Bitrix24 refuses plain http)")
    return value.rstrip("/") + "/"


def _check_kafka_name(value: str, what: str) -> str:
    if not _KAFKA_NAME.fullmatch(value) or value in (".", ".."):
        raise ValueError(
            f"{what} {value!r} is not a legal Kafka name: use 1 to 249 of a-z A-Z 0-9 . _ -"
        )
    return value


def is_secret_key(key: str) -> bool:
    """True for a librdkafka property whose value must never be shown (password, key, ...)."""
    return bool(_SECRET_KEY.search(key.lower()))


class KafkaSettings(BaseModel):
    """Kafka connection; `config` passes any librdkafka key straight through (secret ones,
    such as `ssl.key.password` or `sasl.oauthbearer.client.secret`, are kept as secrets)."""

    model_config = _STRICT

    bootstrap_servers: str = Field(min_length=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    group_protocol: Literal["classic", "consumer"] = "classic"
    static_membership: bool = Field(
        default=False,
        description="Static group membership (group.instance.id = <group_id>-<instance_id>). "
        "Off for a Deployment: its pod names are random, so every rollout would leave a "
        "ghost member holding partitions for session.timeout.ms. On for a StatefulSet, "
        "with instance_id = the stable pod name: a restarted pod takes its partitions back "
        "without a rebalance.",
    )
    statistics_interval_ms: int = Field(default=15000, ge=0)
    config: dict[str, str | SecretStr] = Field(
        default_factory=dict,
        description="librdkafka properties passed through as they are; secret ones "
        "(*.password, *secret*, ssl.key.pem, ...) are masked in every dump and log",
    )

    @field_validator("config", mode="after")
    @classmethod
    def _secret_values(cls, value: dict[str, str | SecretStr]) -> dict[str, str | SecretStr]:
        return {
            key: SecretStr(item) if isinstance(item, str) and is_secret_key(key) else item
            for key, item in value.items()
        }

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return value

    def librdkafka(self) -> dict[str, Any]:
        """The librdkafka connection dict: typed fields, then `config` pass-through on top."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        if self.sasl_username:
            conf["sasl.username"] = self.sasl_username
        if self.sasl_password:
            conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.ssl_ca_location:
            conf["ssl.ca.location"] = self.ssl_ca_location
        for key, value in self.config.items():
            conf[key] = value.get_secret_value() if isinstance(value, SecretStr) else value
        return conf


class PortalSettings(BaseModel):
    """One Bitrix24 portal (tenant): where to call and the OAuth application."""

    model_config = _STRICT

    rest_url: str = Field(description="client_endpoint, e.g. https://example.bitrix24.com/rest/")
    oauth_url: str = "https://oauth.bitrix.info/oauth/token/"
    client_id: str
    client_secret: SecretStr
    access_token: SecretStr | None = None
    refresh_token: SecretStr | None = None
    rate_drain: float = Field(default=2.0, gt=0, description="leaky bucket drain, req/s")
    rate_burst: int = Field(default=50, ge=1)
    rate_share: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="a fixed share of the portal's limits for this replica; unset: each "
        "replica takes the part of the source partitions it owns, updated at every rebalance",
    )
    operating_limit: float = Field(
        default=480.0, gt=0, description="per-method seconds per 10 min (time.operating)"
    )
    member_id: str | None = Field(
        default=None,
        description="the portal's member_id (auth[member_id] of its events); default: "
        "the portal's key",
    )
    application_token: SecretStr | None = Field(
        default=None,
        description="the installed app's application_token (OnAppInstall), checked "
        "against auth[application_token] of pushed events",
    )
    application_token_file: str | None = Field(
        default=None,
        description="a file holding the application_token (e.g. a mounted Secret); read "
        "again when it changes",
    )

    @field_validator("rest_url")
    @classmethod
    def _rest_url(cls, value: str) -> str:
        return _check_url(value, "rest_url")

    @field_validator("oauth_url")
    @classmethod
    def _oauth_url(cls, value: str) -> str:
        return _check_url(value, "oauth_url")


class EngineSettings(BaseModel):
    """Ordering, batching, buffering and state."""

    model_config = _STRICT

    batch_size: int = Field(default=50, ge=1, le=500)
    linger_ms: int = Field(default=5, ge=0)
    max_in_flight_requests: int = Field(default=8, ge=1)
    max_buffered_events: int = Field(default=10_000, ge=10)
    max_buffered_per_chat: int = Field(
        default=500,
        ge=1,
        description="a chat's waiting calls that pause its partition (resumed at half)",
    )
    reorder_buffer_per_chat: int = Field(default=64, ge=1)
    gap_timeout_s: float = Field(default=30.0, gt=0)
    rename_wait_timeout_s: float = Field(default=3600.0, gt=0)
    dedup_window: int = Field(default=64, ge=1, description="event ids remembered per chat")
    chat_ttl_s: float = Field(default=7 * 86400.0, gt=0)
    commit_interval_ms: int = Field(default=50, ge=1)
    unknown_outcome_policy: Literal["resend", "dead-letter"] = "resend"
    reconcile_sends: bool = Field(
        default=True,
        description="look a send of unknown outcome (in flight at a crash, or a timeout, "
        "reset, 5xx or unreadable answer after it left) up on the portal "
        "(imopenlines.session.history.get) and resend it only if it is missing; "
        "unknown_outcome_policy applies when it cannot be looked up, or to every such "
        "send when this is off",
    )
    reconcile_settle_s: float = Field(
        default=65.0,
        ge=0,
        description="wait this long before looking a send up, so the portal has finished "
        "the request (Bitrix24 cuts a request off after 60 s)",
    )
    reconcile_max_sends: int | None = Field(
        default=None,
        ge=1,
        description="a send that went out this many times, its outcome unknown each time, "
        "is not sent again when the lookup finds it missing (or cannot tell): it is "
        "dead-lettered as exhausted and its chat parks, as a call whose retries ran out; "
        "unset: retry.max_attempts",
    )
    send_status_reading: bool = Field(
        default=False,
        description="send ReadConfirmed as imconnector.send.status.reading: the server does "
        "nothing with it (a stub) and each call costs rate budget",
    )
    batch_renames: bool = Field(
        default=True,
        description="send up to 50 chat.name.set calls as one REST `batch` request; a "
        "portal that refuses it gets one request per rename",
    )


class TopicSettings(BaseModel):
    """How the service creates its own topics (changelog, outcomes, dead letters, tokens)."""

    replication_factor: int = Field(
        default=-1, ge=-1, description="replicas per partition; -1: the broker's default"
    )
    min_insync_replicas: int | None = Field(
        default=None, ge=1, description="min.insync.replicas; unset: the broker's default"
    )


class RetrySettings(BaseModel):
    """Exponential backoff with full jitter, per event."""

    model_config = _STRICT

    max_attempts: int = Field(default=8, ge=1)
    max_elapsed_s: float = Field(default=300.0, gt=0)
    base_delay_s: float = Field(default=0.2, gt=0)
    max_delay_s: float = Field(default=30.0, gt=0)


class HttpSettings(BaseModel):
    """The Bitrix24 HTTP client."""

    model_config = _STRICT

    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=65.0, gt=0)
    max_connections: int = Field(default=16, ge=1)
    user_agent: str = "imconnector-consumer"


class InboundSettings(BaseModel):
    """Bitrix24's operator events into Kafka (`consumer.inbound`, docs/inbound-events.md)."""

    topic: str = "imconnector.operator-events"
    topic_partitions: int = Field(default=6, ge=1, description="when the topic is created")
    wire: Literal["single-object", "confluent"] = "single-object"
    pull_in_service: bool = Field(
        default=False,
        description="`run` also pulls the offline event queue (a thread with its own "
        "Kafka producer)",
    )
    pull_interval_s: float = Field(default=2.0, gt=0, description="wait after an empty fetch")
    pull_limit: int = Field(default=50, ge=1, le=1000, description="event.offline.get limit")
    auth_connector: str | None = Field(
        default=None,
        description="event.bind/offline source key (auth_connector); Professional plan",
    )
    push_on_service_port: bool = Field(
        default=False, description="serve the push handler on http_port as well"
    )
    push_path: str = "/bitrix24/events"
    push_host: str = "0.0.0.0"
    push_port: int = Field(default=9010, ge=0, le=65535, description="`events serve`")
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    push_rate: float = Field(default=50.0, gt=0, description="requests/s over all portals")
    push_burst: int = Field(default=200, ge=1)
    replay_window: int = Field(
        default=100_000, ge=1, description="event ids remembered to refuse replays"
    )
    produce_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("push_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or "?" in value:
            raise ValueError(f"push_path {value!r} must be an absolute path such as /events")
        return value


class Settings(BaseSettings):
    """Everything the service reads at start."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )

    kafka: KafkaSettings
    source_topics: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["chat-events"], min_length=1
    )
    group_id: str = "imconnector-consumer"
    instance_id: str = Field(
        default_factory=socket.gethostname,
        description="Stable per replica where it can be: the suffix of the transactional id "
        "(and of group.instance.id with kafka.static_membership). Defaults to the host "
        "name, which is the pod name: random in a Deployment, stable in a StatefulSet.",
    )
    schema_registry_url: str | None = Field(
        default=None,
        description="Confluent-compatible Schema Registry, http or https (several URLs: "
        "comma-separated); credentials go in the settings below, never in the URL",
    )
    schema_registry_username: str | None = Field(default=None, description="basic auth user")
    schema_registry_password: SecretStr | None = Field(
        default=None, description="basic auth password"
    )
    schema_registry_bearer_token: SecretStr | None = Field(
        default=None, description="a static bearer token (instead of basic auth)"
    )
    schema_registry_logical_cluster: str | None = Field(
        default=None,
        description="Confluent Cloud's logical cluster id (lsrc-...) sent with a bearer token",
    )
    schema_registry_ca_location: str | None = Field(
        default=None, description="CA bundle (PEM file) that signed the registry's certificate"
    )
    schema_registry_timeout_s: float = Field(default=10.0, gt=0)
    dlq_topic_template: str = "{topic}.dlq"
    outcomes_topic: str = "imconnector.outcomes"
    changelog_topic_template: str = "{group}.{topic}.changelog"
    tokens_topic: str = "imconnector.tokens"
    portals: dict[str, PortalSettings] = Field(default_factory=dict)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    http_port: int = Field(default=9000, ge=0, le=65535)
    http_host: str = "0.0.0.0"
    shutdown_grace_s: float = Field(default=20.0, gt=0)
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    inbound: InboundSettings = Field(default_factory=InboundSettings)

    @field_validator("source_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("source_topics")
    @classmethod
    def _legal_topics(cls, value: list[str]) -> list[str]:
        return [_check_kafka_name(topic, "topic") for topic in value]

    @field_validator("outcomes_topic", "tokens_topic")
    @classmethod
    def _legal_topic(cls, value: str) -> str:
        return _check_kafka_name(value, "topic")

    @field_validator("group_id")
    @classmethod
    def _legal_group(cls, value: str) -> str:
        return _check_kafka_name(value, "group id")

    @field_validator("schema_registry_url")
    @classmethod
    def _registry(cls, value: str | None) -> str | None:
        if value is None:
            return None
        urls = []
        for url in value.split(","):
            parts = urlsplit(url.strip())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url.strip()!r} is not an absolute http(s) URL")
            if parts.username or parts.password:
                raise ValueError(
                    "put the credentials in IMCONNECTOR_SCHEMA_REGISTRY_USERNAME and "
                    "IMCONNECTOR_SCHEMA_REGISTRY_PASSWORD, not in the URL"
                )
            urls.append(url.strip().rstrip("/"))
        return ",".join(urls)

    @field_validator("schema_registry_ca_location")
    @classmethod
    def _registry_ca(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"CA bundle {value} does not exist (mount the file there)")
        return value

    @model_validator(mode="after")
    def _registry_auth(self) -> Settings:
        basic = self.schema_registry_username is not None or self.schema_registry_password
        if basic and not (self.schema_registry_username and self.schema_registry_password):
            raise ValueError(
                "schema registry basic auth needs both IMCONNECTOR_SCHEMA_REGISTRY_USERNAME "
                "and IMCONNECTOR_SCHEMA_REGISTRY_PASSWORD"
            )
        if basic and self.schema_registry_bearer_token:
            raise ValueError("schema registry: set basic auth or a bearer token, not both")
        return self

    @model_validator(mode="after")
    def _reconcile_budget(self) -> Settings:
        """A send in doubt is sent again as often as a call is retried, unless set."""
        if self.engine.reconcile_max_sends is None:
            self.engine.reconcile_max_sends = self.retry.max_attempts
        return self

    @model_validator(mode="after")
    def _templates(self) -> Settings:
        for name in ("dlq_topic_template", "changelog_topic_template"):
            template = getattr(self, name)
            try:
                template.format(topic="t", group="g")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"{name} {template!r} may only use {{topic}} and {{group}}"
                ) from exc
            for topic in self.source_topics:
                derived = template.format(topic=topic, group=self.group_id)
                _check_kafka_name(derived, f"{name} gives topic")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Precedence: explicit arguments, environment, secret files, the YAML file.

        Secret files (`IMCONNECTOR_SECRETS_DIR`, e.g. a mounted Kubernetes Secret or CSI
        volume) are named like the variables: `IMCONNECTOR_KAFKA__SASL_PASSWORD`, ...
        """
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        secrets_dir = getattr(file_secret_settings, "secrets_dir", None) or os.environ.get(
            f"{ENV_PREFIX}SECRETS_DIR"
        )
        if secrets_dir:
            sources.append(
                NestedSecretsSettingsSource(
                    file_secret_settings, secrets_dir=secrets_dir, secrets_dir_missing="error"
                )
            )
        config_file = os.environ.get(f"{ENV_PREFIX}CONFIG_FILE")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    def dlq_topic(self, topic: str) -> str:
        """The dead-letter topic for source `topic`."""
        return self.dlq_topic_template.format(topic=topic, group=self.group_id)

    def changelog_topic(self, topic: str) -> str:
        """The compacted state changelog co-partitioned with source `topic`."""
        return self.changelog_topic_template.format(topic=topic, group=self.group_id)

    def masked_dump(self) -> dict[str, Any]:
        """The settings as a dict safe to log: every secret shown as '**********'
        (`SecretStr` fields and the secret librdkafka keys of `kafka.config`)."""
        return self.model_dump(mode="json")  # SecretStr dumps as '**********' in json mode


def load_settings(
    config_file: str | Path | None = None,
    *,
    secrets_dir: str | Path | None = None,
    **overrides: Any,
) -> Settings:
    """Read and validate the settings, or raise `ConfigError` naming the bad setting.

    Unknown `IMCONNECTOR_*` variables (and secret files) are errors too, with a
    did-you-mean: a typo must not fall back to a default without a word.
    """
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(
                f"config file {path} does not exist (--config / {ENV_PREFIX}CONFIG_FILE)"
            )
        os.environ[f"{ENV_PREFIX}CONFIG_FILE"] = str(path)
    names = list(os.environ)
    directory = secrets_dir or os.environ.get(f"{ENV_PREFIX}SECRETS_DIR")
    if directory:
        if not Path(directory).is_dir():
            raise ConfigError(
                f"secrets directory {directory} does not exist ({ENV_PREFIX}SECRETS_DIR)"
            )
        names += [entry.name for entry in Path(directory).iterdir()]
    unknown = unknown_names(Settings, names)
    if unknown:
        raise ConfigError("; ".join(unknown))
    arguments: dict[str, Any] = {**overrides, "_secrets_dir": directory or None}
    try:
        return Settings(**arguments)
    except SettingsError as exc:
        raise ConfigError(
            f"{exc} (complex settings such as IMCONNECTOR_PORTALS take JSON)"
        ) from None
    except ValidationError as exc:
        errors = exc.errors()
        first = describe_error(Settings, dict(errors[0]))
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(first + more) from None
