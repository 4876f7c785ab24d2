"""Writer schemas from a Confluent-compatible Schema Registry, through confluent-kafka's
`SchemaRegistryClient` (http or https, basic or bearer auth, a CA bundle).

The decoder needs each writer schema parsed for fastavro, once per id. The error
semantics are the service's own: a 404 for an id is poison (`UnknownSchema`); no answer,
a timeout, a refused connection or any other HTTP status is `RegistryUnavailable` (the
record waits: it is not the record's fault). Requests are not retried here: the engine
retries the waiting record, and a retry loop inside would stall its poll loop.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import fastavro
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry import SchemaRegistryClient as ConfluentRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from consumer.codec.bundle import parse_plain
from consumer.errors import RegistryUnavailable, UnknownSchema

try:  # the HTTP library confluent-kafka's client uses: httpx2 when installed, else httpx
    import httpx2 as registry_http
except ImportError:  # pragma: no cover - depends on what the extra pulled in
    import httpx as registry_http  # type: ignore[no-redef]

if TYPE_CHECKING:
    from consumer.settings import Settings

# No answer at all (refused, reset, DNS, TLS, timeout): the registry is down, not the record.
_NO_ANSWER = registry_http.TransportError

__all__ = ["SchemaRegistryClient", "registry_http"]

_ENV = "IMCONNECTOR_SCHEMA_REGISTRY_"


class SchemaRegistryClient:
    """Fetch writer schemas by id (parsed, cached), register, check compatibility."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        bearer_token: str | None = None,
        logical_cluster: str | None = None,
        ca_location: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        conf: dict[str, Any] = {"url": self.url, "timeout": timeout, "max.retries": 0}
        if username is not None and password is not None:
            conf["basic.auth.user.info"] = f"{username}:{password}"
        if bearer_token is not None:
            conf["bearer.auth.credentials.source"] = "STATIC_TOKEN"
            conf["bearer.auth.token"] = bearer_token
            # Confluent Cloud routes by it; other registries ignore the header.
            conf["bearer.auth.logical.cluster"] = logical_cluster or ""
        if ca_location is not None:
            conf["ssl.ca.location"] = ca_location
        self._client = ConfluentRegistryClient(conf)
        self._by_id: dict[int, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> SchemaRegistryClient | None:
        """The registry of `settings`, or None when no URL is configured."""
        if not settings.schema_registry_url:
            return None
        password = settings.schema_registry_password
        token = settings.schema_registry_bearer_token
        return cls(
            settings.schema_registry_url,
            username=settings.schema_registry_username,
            password=password.get_secret_value() if password else None,
            bearer_token=token.get_secret_value() if token else None,
            logical_cluster=settings.schema_registry_logical_cluster,
            ca_location=settings.schema_registry_ca_location,
            timeout=settings.schema_registry_timeout_s,
        )

    @classmethod
    def from_environment(cls, url: str) -> SchemaRegistryClient:
        """`url` with the auth of the `IMCONNECTOR_SCHEMA_REGISTRY_*` variables (admin CLI)."""
        return cls(
            url,
            username=os.environ.get(f"{_ENV}USERNAME"),
            password=os.environ.get(f"{_ENV}PASSWORD"),
            bearer_token=os.environ.get(f"{_ENV}BEARER_TOKEN"),
            logical_cluster=os.environ.get(f"{_ENV}LOGICAL_CLUSTER"),
            ca_location=os.environ.get(f"{_ENV}CA_LOCATION"),
        )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def __enter__(self) -> SchemaRegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_schema(self, schema_id: int) -> Any:
        """The parsed writer schema for `schema_id`; `UnknownSchema` on 404."""
        with self._lock:
            cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        try:
            schema = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise UnknownSchema(
                    f"schema id {schema_id} is unknown to the registry", code="UNKNOWN_SCHEMA_ID"
                ) from None
            raise RegistryUnavailable(
                f"schema registry {self.url} answered HTTP {exc.http_status_code} for id "
                f"{schema_id}; records wait until it answers"
            ) from None
        except _NO_ANSWER as exc:
            raise RegistryUnavailable(
                f"schema registry {self.url} unreachable ({type(exc).__name__}); "
                "records wait until it answers"
            ) from None
        except Exception as exc:  # noqa: BLE001 - a 200 whose body is no schema at all
            raise UnknownSchema(
                f"schema id {schema_id}: the registry's answer is not a schema "
                f"({type(exc).__name__})",
                code="INVALID_WRITER_SCHEMA",
            ) from None
        if (schema.schema_type or "AVRO") != "AVRO":
            raise UnknownSchema(
                f"schema id {schema_id} is {schema.schema_type}, not Avro",
                code="INVALID_WRITER_SCHEMA",
            )
        try:
            parsed = parse_plain(json.loads(schema.schema_str or ""))
        except (ValueError, KeyError, TypeError, fastavro.schema.SchemaParseException) as exc:
            raise UnknownSchema(
                f"schema id {schema_id} is not a valid Avro schema: {exc}",
                code="INVALID_WRITER_SCHEMA",
            ) from exc
        with self._lock:
            self._by_id[schema_id] = parsed
        return parsed

    def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Register `schema` under `subject` (idempotent) and return its id."""
        text = json.dumps(schema, separators=(",", ":"), sort_keys=True)
        try:
            return int(self._client.register_schema(subject, Schema(text, "AVRO")))
        except SchemaRegistryError as exc:
            raise RegistryUnavailable(
                f"registering {subject} at {self.url} failed: HTTP {exc.http_status_code} "
                f"{exc.error_message}"
            ) from None
        except _NO_ANSWER as exc:
            raise RegistryUnavailable(
                f"registering {subject} at {self.url} failed: {type(exc).__name__}"
            ) from None

    def latest(self, subject: str) -> dict[str, Any] | None:
        """`{"version", "id"}` of the subject's latest version, None if it has none."""
        try:
            registered = self._client.get_latest_version(subject)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return None
            raise
        return {"version": registered.version, "id": registered.schema_id}

    def is_compatible(self, subject: str, schema: Mapping[str, Any]) -> bool:
        """Is `schema` compatible with the subject's latest version (True if it has none)?"""
        try:
            return bool(
                self._client.test_compatibility(subject, Schema(json.dumps(schema), "AVRO"))
            )
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return True  # no version yet: anything is compatible
            raise
