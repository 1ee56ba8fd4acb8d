"""Webhooks for organizations (issue 11): signed, persistent, retried event deliveries.

- `signing`: Standard Webhooks headers and secrets (pure);
- `policy`: the retry schedule and the level hysteresis (pure);
- `guard`: which destinations may receive webhooks;
- `vault`: endpoint secrets sealed at rest;
- `watch`: events found by comparing states (usage, credits, nodes, pools);
- `delivery`: the worker that sends the outbox;
- `service`: `WebhookService`, what the API, CLI and dashboard call.

Events come in through `exitgate.events.EventBus`; rows live in `exitgate.store.webhooks`.
"""
