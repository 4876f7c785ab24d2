"""A small Confluent Schema Registry client: writer schemas by id (cached), registration.

A 404 for an id is poison (`UnknownSchema`); no answer, a timeout or a 5xx is
`RegistryUnavailable`: the record waits, it is not the record's fault.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

import fastavro
import httpx

from consumer.codec.bundle import parse_plain
from consumer.errors import RegistryUnavailable, UnknownSchema


class SchemaRegistryClient:
    """A small Confluent Schema Registry client: fetch by id (cached) and register."""

    def __init__(self, url: str, *, timeout: float = 5.0, auth: tuple[str, str] | None = None):
        self.url = url.rstrip("/")
        self._http = httpx.Client(timeout=timeout, auth=auth)
        self._by_id: dict[int, Any] = {}
        self._ids: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> SchemaRegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get_schema(self, schema_id: int) -> Any:
        """Return the parsed writer schema for `schema_id`; raises `UnknownSchema` on 404."""
        with self._lock:
            cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        try:
            response = self._http.get(f"{self.url}/schemas/ids/{schema_id}")
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(
                f"schema registry {self.url} unreachable ({type(exc).__name__}); "
                "records wait until it answers"
            ) from exc
        if response.status_code == 404:
            raise UnknownSchema(
                f"schema id {schema_id} is unknown to the registry", code="UNKNOWN_SCHEMA_ID"
            )
        if response.status_code != 200:
            raise RegistryUnavailable(
                f"schema registry {self.url} answered HTTP {response.status_code} for id "
                f"{schema_id}"
            )
        try:
            parsed = parse_plain(json.loads(response.json()["schema"]))
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
        with self._lock:
            known = self._ids.get((subject, text))
        if known is not None:
            return known
        try:
            response = self._http.post(
                f"{self.url}/subjects/{subject}/versions",
                json={"schema": text},
                headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
            )
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(f"registering {subject} at {self.url} failed: {exc}") from exc
        schema_id = int(response.json()["id"])
        with self._lock:
            self._ids[(subject, text)] = schema_id
        return schema_id

    def is_compatible(self, subject: str, schema: Mapping[str, Any]) -> bool:
        """Ask the registry whether `schema` is compatible with the subject's latest version."""
        response = self._http.post(
            f"{self.url}/compatibility/subjects/{subject}/versions/latest",
            json={"schema": json.dumps(schema)},
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        if response.status_code == 404:
            return True  # no version yet: anything is compatible
        response.raise_for_status()
        return bool(response.json()["is_compatible"])
