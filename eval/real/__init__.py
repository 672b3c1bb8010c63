"""Real-robot deployment: a WebSocket policy server, a torch-free robot-side client, and offline
replay evaluation on recorded episodes.

* :mod:`eval.real.msgpack_numpy` — the wire codec (msgpack with numpy arrays).
* :mod:`eval.real.serve`         — ``python -m eval.real.serve --policy DIR``: the policy server.
* :mod:`eval.real.client`        — ``PolicyClient`` / ``ActionChunkBroker`` (numpy + websockets +
  msgpack only; importing it never imports torch).
* :mod:`eval.real.run_sim_loop`  — drive a reach2d env through the client (the robot path, without
  a robot).
* :mod:`eval.real.replay`        — ``python -m eval.real.replay``: open-loop replay of recorded
  episodes, error vs recorded actions, energy/error correlation.

Nothing is imported here, so ``import eval.real.client`` stays torch-free.
"""
