"""The policy server's messages: request types and field names, shared by the server
(``eval/real/serve.py``, which validates them in ``eval/real/serve_request.py``) and the robot
client (:class:`~vla_ebt_client.client.PolicyClient`). Bodies are :mod:`vla_ebt_client.codec`
maps (msgpack, numpy arrays); one binary WebSocket message each. The whole protocol with every
reply field: docs/serving.md.

Requests (``"type"``, default ``"infer"``; every request may carry ``"request_id"``, echoed back):

* ``"metadata"``: the server answers with its metadata (also sent on connect).
* ``"infer"``: an observation (:data:`OBS_KEYS`) plus optional :data:`INFER_FIELDS`, all in the
  robot's (unnormalized) action units:

  - ``latency_budget_ms``: a number > 0, the chunk's latency budget (anytime heads, EBT);
  - ``prefix`` (d, D') or (B, d, D'), ``0 <= d <= H``, ``D' <= D``: actions already committed for the
    first d steps of the new chunk, returned exactly (real-time chunking, docs/realtime.md);
  - ``prefix_weights`` (H,) or (B, H) >= 0 with ``soft_target`` (H, D') or (B, H, D'): soft
    guidance toward the previous plan (heads declaring ``capabilities.inpainting`` only).

  Reply ``"result"`` with ``actions`` (B, H, D).
* ``"score"``: an observation plus ``chunks`` (K, H, D') or (B, K, H, D'): candidate chunks in
  action units. Reply ``"scores"`` with ``energy`` (B, K), the policy's energy of each (lower is
  better; heads declaring ``capabilities.reports_energy`` only).

Any request can instead get ``"error"`` (``kind`` "bad_request" or "internal", ``error`` the
message); the connection stays open. Depends on nothing.
"""

from __future__ import annotations

__all__ = [
    "PROTOCOL",
    "OBS_KEYS",
    "CONTROL_KEYS",
    "INFER_FIELDS",
    "INPAINTING_FIELDS",
    "SCORE_FIELDS",
    "REQUEST_TYPES",
    "REPLY_TYPES",
]

PROTOCOL = "vla_ebt.serve/1"
#: the observation of every infer / score request (schema of ``vla_ebt.schema``)
OBS_KEYS = ("images", "instruction", "state", "embodiment")
#: protocol keys a request may carry besides its payload
CONTROL_KEYS = ("request_id", "type")
#: real-time chunking fields of an infer request (unnormalized action units)
INPAINTING_FIELDS = ("prefix", "prefix_weights", "soft_target")
#: optional fields of an infer request
INFER_FIELDS = ("latency_budget_ms",) + INPAINTING_FIELDS
#: fields of a score request (required)
SCORE_FIELDS = ("chunks",)
REQUEST_TYPES = ("infer", "score", "metadata")
#: request type -> the reply type of a success
REPLY_TYPES = {"infer": "result", "score": "scores", "metadata": "metadata"}
