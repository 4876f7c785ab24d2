"""Bitrix24's operator events into Kafka: the other half of the connector.

Bitrix24 raises `OnImConnector*` events when an operator answers, edits or deletes in an
Open Channel (and when dialogs start and finish, a connector is disabled, a line is
deleted). Two ways in, one contract out (`OperatorEvent`, `schemas/operator_event.*`):

* `pull` — the offline queue (`event.offline.get` with a reservation, produced in one
  Kafka transaction, then `event.offline.clear`): no ingress needed, nothing lost;
* `push` — an HTTP handler for classic `event.bind` handlers, checked against the app's
  `application_token`, answered once Kafka acknowledged the records.

`payloads` parses what Bitrix24 sends, `contract` is the Avro contract, `sink` the Kafka
producers, `commands` the `imconnector-consumer events ...` CLI. docs/inbound-events.md
has the whole story.
"""
