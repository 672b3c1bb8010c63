"""Real-robot deployment: a WebSocket policy server and offline replay evaluation on recorded
episodes. The robot side (wire codec, ``PolicyClient``, ``ActionChunkBroker``, observation
history) is the torch-free package :mod:`vla_ebt_client` (``packages/vla_ebt_client``).

* :mod:`eval.real.serve`         — ``python -m eval.real.serve --policy DIR``: the policy server
  (protocol: docs/serving.md); :mod:`eval.real.serve_request` checks each request.
* :mod:`eval.real.run_sim_loop`  — drive a simulated suite through the client (the robot path,
  without a robot).
* :mod:`eval.real.replay`        — ``python -m eval.real.replay``: open-loop replay of recorded
  episodes, error vs recorded actions, energy/error correlation; :mod:`eval.real.replay_report`
  writes its report files.
"""
