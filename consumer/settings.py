"""Settings: environment variables `IMCONNECTOR_…` (nested with `__`) over an optional YAML file.

Validated at start; `load_settings` turns any problem into a one-line `ConfigError` that
names the setting and the fix. Secrets are `SecretStr` and `masked_dump` hides them.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from consumer.errors import ConfigError

ENV_PREFIX = "IMCONNECTOR_"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _check_url(value: str, what: str, *, allow_loopback_http: bool = True) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} {value!r} is not an absolute http(s) URL")
    if parts.scheme == "http" and not (allow_loopback_http and parts.hostname in _LOOPBACK):
        raise ValueError(f"{what} {value!r} must use https (Bitrix24 refuses plain http)")
    return value.rstrip("/") + "/"


class KafkaSettings(BaseModel):
    """Kafka connection; `config` passes any librdkafka key straight through."""

    bootstrap_servers: str = Field(min_length=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    group_protocol: Literal["classic", "consumer"] = "classic"
    static_membership: bool = Field(
        default=True,
        description="group.instance.id = instance_id: a restarted replica "
        "takes its partitions back without a rebalance",
    )
    statistics_interval_ms: int = Field(default=15000, ge=0)
    config: dict[str, str] = Field(default_factory=dict)

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
        conf.update(self.config)
        return conf


class PortalSettings(BaseModel):
    """One Bitrix24 portal (tenant): where to call and the OAuth application."""

    rest_url: str = Field(description="client_endpoint, e.g. https://example.bitrix24.com/rest/")
    oauth_url: str = "https://oauth.bitrix.info/oauth/token/"
    client_id: str
    client_secret: SecretStr
    access_token: SecretStr | None = None
    refresh_token: SecretStr | None = None
    rate_drain: float = Field(default=2.0, gt=0, description="leaky bucket drain, req/s")
    rate_burst: int = Field(default=50, ge=1)
    rate_share: float = Field(default=1.0, gt=0, le=1, description="share for this replica")
    operating_limit: float = Field(
        default=480.0, gt=0, description="per-method seconds per 10 min (time.operating)"
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


class RetrySettings(BaseModel):
    """Exponential backoff with full jitter, per event."""

    max_attempts: int = Field(default=8, ge=1)
    max_elapsed_s: float = Field(default=300.0, gt=0)
    base_delay_s: float = Field(default=0.2, gt=0)
    max_delay_s: float = Field(default=30.0, gt=0)


class HttpSettings(BaseModel):
    """The Bitrix24 HTTP client."""

    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=65.0, gt=0)
    max_connections: int = Field(default=16, ge=1)
    user_agent: str = "imconnector-consumer"


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
        description="stable per replica: the transactional id suffix",
    )
    schema_registry_url: str | None = None
    dlq_topic_template: str = "{topic}.dlq"
    outcomes_topic: str = "imconnector.outcomes"
    changelog_topic_template: str = "{group}.{topic}.changelog"
    tokens_topic: str = "imconnector.tokens"
    portals: dict[str, PortalSettings] = Field(default_factory=dict)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    http_port: int = Field(default=9000, ge=0, le=65535)
    http_host: str = "0.0.0.0"
    shutdown_grace_s: float = Field(default=20.0, gt=0)
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("source_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("schema_registry_url")
    @classmethod
    def _registry(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value, "schema_registry_url").rstrip("/")

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
        """Precedence: explicit arguments, then environment, then the YAML file."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
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
        """The settings as a dict safe to log: every secret shown as '**********'."""
        return self.model_dump(mode="json")  # SecretStr dumps as '**********' in json mode


def _describe(error: dict[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ()) if part not in ("function-after",)]
    name = ENV_PREFIX + "__".join(loc).upper() if loc else ENV_PREFIX
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if error.get("type") == "missing":
        if [part.lower() for part in loc] in (["kafka"], ["kafka", "bootstrap_servers"]):
            return (
                f"{ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS is required: set it to host:port[,host:port]"
            )
        return f"{name} is required: set it in the environment or the YAML config file"
    if error.get("type") == "extra_forbidden":
        return f"{name} is not a known setting (check the spelling; see README 'Configuration')"
    return f"{name}: {message}"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Read and validate the settings, or raise `ConfigError` naming the first bad setting."""
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(
                f"config file {path} does not exist (--config / {ENV_PREFIX}CONFIG_FILE)"
            )
        os.environ[f"{ENV_PREFIX}CONFIG_FILE"] = str(path)
    try:
        return Settings(**overrides)
    except SettingsError as exc:
        raise ConfigError(
            f"{exc} (complex settings such as IMCONNECTOR_PORTALS take JSON)"
        ) from None
    except ValidationError as exc:
        errors = exc.errors()
        first = _describe(dict(errors[0]))
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(first + more) from None
