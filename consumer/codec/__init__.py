"""Bytes <-> `ChatEvent`: Confluent Schema Registry framing and Avro single-object encoding.

`decoder` detects the wire format per record and decodes; `records` maps Avro records to
the event model; `bundle` holds the released schema versions; `registry` fetches writer
schemas; `avro_fast` generates the strict reader for the bundled schema.
"""

from consumer.codec.decoder import ChatEventDecoder, ChatEventEncoder, WireFormat
from consumer.codec.records import event_from_json, event_from_record, event_to_record
from consumer.codec.registry import SchemaRegistryClient

__all__ = [
    "ChatEventDecoder",
    "ChatEventEncoder",
    "SchemaRegistryClient",
    "WireFormat",
    "event_from_json",
    "event_from_record",
    "event_to_record",
]
