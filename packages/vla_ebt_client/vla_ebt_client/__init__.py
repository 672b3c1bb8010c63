"""vla_ebt_client: the torch-free side of vla_ebt (numpy + websockets + msgpack only).

* :mod:`vla_ebt_client.codec`   — the wire codec (msgpack with numpy arrays): ``packb`` / ``unpackb``.
* :mod:`vla_ebt_client.protocol` — the policy server's request types and field names (shared with the server).
* :mod:`vla_ebt_client.client`  — ``PolicyClient``: WebSocket client of ``python -m eval.real.serve``
  (``infer``, with real-time chunking fields; ``score``: energies of candidate chunks).
* :mod:`vla_ebt_client.broker`  — ``ActionChunkBroker``: chunks (B, H, D) -> one action (B, D) per
  control step (receding horizon or temporal ensembling, synchronous or asynchronous: naive,
  temporal ensemble, RTC, energy gate); ``VLAPolicy.select_action`` and the sim rollout use it too.
* :mod:`vla_ebt_client.realtime` — when a request arrives (``RealTime`` threads, ``SimulatedDelay``,
  ``MeasuredDelay``), the delay estimate, RTC's prefix weights, ``action_smoothness``.
* :mod:`vla_ebt_client.history` — ``ObservationHistory`` / ``history_indices``: the last To
  observations, the first one repeated before the episode start (training and closed loops alike).

::

    from vla_ebt_client import ActionChunkBroker, ObservationHistory, PolicyClient

    client = PolicyClient("ws://127.0.0.1:8000", token="secret")
    broker = ActionChunkBroker(client)                    # mode / n_action_steps from the server
    history = ObservationHistory(client.metadata["obs_steps"], embodiment=0)
    action = broker.act(history(raw_obs))                 # (1, D) float32 per control step

Nothing here imports torch or vla_ebt.
"""

from .broker import STRATEGIES, ActionChunkBroker, strategy_support
from .client import (
    AuthenticationError,
    LatencyStats,
    MessageTooLargeError,
    PolicyClient,
    PolicyClientError,
    ServerError,
    to_numpy_observation,
)
from .codec import CodecError, packb, unpackb
from .history import ObservationHistory, camera_major, history_indices
from .protocol import PROTOCOL
from .realtime import (
    ON_STARVE,
    DelayEstimator,
    MeasuredDelay,
    RealTime,
    SimulatedDelay,
    action_smoothness,
    rtc_prefix_weights,
)

__version__ = "0.1.0"

__all__ = [
    "ActionChunkBroker",
    "AuthenticationError",
    "DelayEstimator",
    "MeasuredDelay",
    "ON_STARVE",
    "RealTime",
    "STRATEGIES",
    "SimulatedDelay",
    "action_smoothness",
    "rtc_prefix_weights",
    "strategy_support",
    "CodecError",
    "LatencyStats",
    "MessageTooLargeError",
    "ObservationHistory",
    "PROTOCOL",
    "PolicyClient",
    "PolicyClientError",
    "ServerError",
    "camera_major",
    "history_indices",
    "packb",
    "to_numpy_observation",
    "unpackb",
]
