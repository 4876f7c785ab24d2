"""The Bitrix24 side: REST client, error classification, OAuth tokens and portal limits."""
