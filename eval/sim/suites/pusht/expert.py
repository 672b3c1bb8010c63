"""PushTExpert: a contact-point pushing planner on privileged state (block pose, goal pose,
block inertia); measured success in docs/suites.md, "PushT"."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .geometry import (AGENT_RADIUS, TEE_RECTS, WORKSPACE, inside_boxes, make_contacts, nearest_on_tee, ray_exit,
                       rot, segments_hit_boxes)

__all__ = ["PushTExpert", "ExpertConfig"]


@dataclass(frozen=True)
class ExpertConfig:
    """Tuning of :class:`PushTExpert` (lengths in world pixels)."""

    contact_spacing: float = 5.0  # candidate contacts every this many pixels along the outline
    angle_weight: float = 1.0  # rho = angle_weight * sqrt(I / m): pixels per radian of angle error
    travel_cost: float = 0.25  # score penalty per 100 px of travel to a contact
    commit_bonus: float = 0.1  # score bonus of the contact currently pursued (hysteresis)
    min_cos: float = 0.15  # only contacts aligned better than this compete
    clear_check: float = AGENT_RADIUS + 6.0  # paths keep this far from the T (centre distance)
    clear_node: float = AGENT_RADIUS + 12.0  # detour waypoints sit this far out
    approach_gap: float = 3.0  # pre-contact point: this far off the touching position
    engage_tol: float = 4.0  # start pushing within this distance of the pre-contact point
    lookahead: float = 50.0  # carrot distance along the path while travelling
    push_gain: float = 1.0  # push target depth = gain * predicted optimal push length
    min_push: float = 2.0
    max_push: float = 30.0


class PushTExpert:
    """Contact-point pushing expert on privileged state (block pose, goal pose, block inertia).

    Model: contacts are frictionless and the block has no momentum, so a push at outline point
    p with inward normal n moves the block quasi-statically along the generalized direction
    D = (n / m, rho * ((p - c) x n) / I) per unit impulse (c: centre of gravity, m: mass,
    I: inertia, rho = ``angle_weight`` * sqrt(I / m) converts radians to pixels).

    Each control step:

    1. Error e = (goal cog - cog, rho * wrap(goal angle - angle)).
    2. Score every candidate contact (points every ``contact_spacing`` px on the T outline whose
       touching disc clears the rest of the T) by cos(e, D_j) minus ``travel_cost`` x the
       length of a collision-free path to it (plus ``commit_bonus`` for the contact already
       pursued). Only contacts with cos > ``min_cos`` compete (if none does, the best-aligned
       one is taken); the best is pursued.
    3. If the agent sits at the chosen contact's pre-contact point (``approach_gap`` off the
       face, within ``engage_tol``) or on its normal ray against the face, push: command the touching position moved ``depth`` px into
       the block along n, depth = ``push_gain`` x the push length that minimizes |e| under the
       model, clipped to [``min_push``, ``max_push``]; the contact is re-located on the moving
       block every step, so the agent follows the face.
    4. Else travel without touching the block: if the agent hovers over the same face, slide
       along it to the new pre-contact point; otherwise move away from the nearest point of the
       T (after a push: back out along the face's normal) until clear, then follow the shortest path through a
       visibility graph on the corners of the T's rectangles grown by ``clear_node`` (segments
       checked against rectangles grown by ``clear_check``) to the contact's exit point (where its
       outward normal ray leaves the grown rectangles), then straight in along the normal to the
       pre-contact point. The command is a carrot ``lookahead`` px ahead on that path (the PD
       controller then moves the agent at about lookahead / 2 px per step).

    ``noise`` adds N(0, noise^2) pixels per component to each action (seeded by ``seed``); the
    result is clipped to the workspace. The expert is stateful (the contact pursued); it resets
    itself when the env's step counter restarts.
    """

    def __init__(self, noise: float = 0.0, seed: int | None = None, cfg: ExpertConfig | None = None) -> None:
        self.cfg = cfg or ExpertConfig()
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        c = self.cfg
        self.contacts = make_contacts(c.contact_spacing, AGENT_RADIUS, c.clear_check)
        self.nodes, self.node_dist, self.node_next = self._graph()
        self.committed: int | None = None
        self._last_step = -1

    # ---------------------------------------------------------------- static visibility graph
    def _graph(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = self.cfg.clear_node
        cand = []
        for xmin, ymin, xmax, ymax in TEE_RECTS:
            cand += [[xmin - c, ymin - c], [xmax + c, ymin - c], [xmax + c, ymax + c], [xmin - c, ymax + c]]
        # concave corners of the T (between bar top and stem sides)
        cand += [[15 + c, 30 + c], [-15 - c, 30 + c]]
        cand = np.array(cand)
        nodes = cand[~inside_boxes(cand, self.cfg.clear_check)]
        k = len(nodes)
        vis = ~segments_hit_boxes(nodes[:, None].repeat(k, 1), nodes[None].repeat(k, 0), self.cfg.clear_check)
        dist = np.where(vis, np.linalg.norm(nodes[:, None] - nodes[None], axis=-1), np.inf)
        np.fill_diagonal(dist, 0.0)
        nxt = np.where(np.isfinite(dist), np.arange(k)[None].repeat(k, 0), -1)
        for m in range(k):  # Floyd-Warshall
            via = dist[:, m : m + 1] + dist[m : m + 1, :]
            better = via < dist
            dist = np.where(better, via, dist)
            nxt = np.where(better, nxt[:, m : m + 1].repeat(k, 1), nxt)
        return nodes, dist, nxt

    def _node_path(self, i: int, j: int) -> list[int]:
        path = [i]
        while i != j:
            i = int(self.node_next[i, j])
            if i < 0:
                return []
            path.append(i)
        return path

    # ---------------------------------------------------------------- main
    def __call__(self, obs: dict, env: Any) -> np.ndarray:
        e = env.unwrapped
        if e.steps <= self._last_step or e.steps == 0:
            self.committed = None
        self._last_step = e.steps
        a = self._plan(e)
        if self.noise > 0:
            a = a + self.rng.normal(0.0, self.noise, 2)
        return np.clip(a, 0.0, WORKSPACE).astype(np.float32)

    def _plan(self, e: Any) -> np.ndarray:
        cfg, C = self.cfg, self.contacts
        bx, by, th = e.block_pose
        gx, gy, gth = e.goal_pose
        m, inertia, cog = e.block_dynamics
        rho = cfg.angle_weight * math.sqrt(inertia / m)
        R = rot(th)
        pos = np.array([bx, by])
        agent = e.agent_pos
        agent_l = R.T @ (agent - pos)  # agent in the body frame

        # 1. error in the body frame: (dx, dy, rho * dtheta)
        goal_cog_l = R.T @ (np.array([gx, gy]) + rot(gth) @ cog - pos)
        dth = (gth - th + math.pi) % (2 * math.pi) - math.pi
        err = np.array([*(goal_cog_l - cog), rho * dth])
        enorm = float(np.linalg.norm(err))
        if enorm < 1e-6:
            return agent

        # 2. candidate scores (body frame)
        n_in = -C.normal
        r = C.point - cog
        torque = r[:, 0] * n_in[:, 1] - r[:, 1] * n_in[:, 0]
        D = np.concatenate([n_in / m, (rho * torque / inertia)[:, None]], axis=1)  # (N, 3)
        dnorm = np.linalg.norm(D, axis=1)
        cos = D @ err / (dnorm * enorm)

        pre = C.touch + C.normal * cfg.approach_gap
        travel, start_l, escape = self._travel(agent_l, C.exit)
        travel = travel + np.linalg.norm(C.exit - pre, axis=1)
        score = cos - cfg.travel_cost * travel / 100.0
        k = self.committed
        pushing = False
        if k is not None:
            pushing = self._engaged(agent_l, k)
            if pushing or self._same_face_near(agent_l, k):
                score[k] = cos[k]
            score[k] += cfg.commit_bonus
        masked = np.where(cos > cfg.min_cos, score, -np.inf)
        best = int(np.argmax(masked))
        if not np.isfinite(masked[best]):  # nothing aligns well: take the best-aligned contact
            best = int(np.argmax(cos))
        if best != k:
            self.committed, pushing = best, self._engaged(agent_l, best)
        k = self.committed

        # 3. push
        if pushing:
            lam = float(D[k] @ err) / float(D[k] @ D[k])
            k_n = 1.0 / m + torque[k] ** 2 / inertia
            depth = float(np.clip(cfg.push_gain * lam * k_n, cfg.min_push, cfg.max_push))
            target_l = C.touch[k] + n_in[k] * depth
            return pos + R @ target_l

        # 4. travel
        if self._same_face_near(agent_l, k):
            path_l = [agent_l, pre[k]]
        else:
            path_l = [agent_l] + ([escape] if escape is not None else [])
            path_l += self._route(start_l, C.exit[k]) + [C.exit[k], pre[k]]
        target_l = self._carrot(path_l, cfg.lookahead)
        return pos + R @ target_l

    def _engaged(self, agent_l: np.ndarray, k: int) -> bool:
        """Agent (body frame) is at contact k's pre-contact point or on its normal ray, pushing."""
        C, cfg = self.contacts, self.cfg
        pre = C.touch[k] + C.normal[k] * cfg.approach_gap
        rel = agent_l - C.touch[k]
        along = float(rel @ C.normal[k])
        lateral = abs(float(rel @ np.array([-C.normal[k][1], C.normal[k][0]])))
        on_ray = lateral <= cfg.engage_tol and -cfg.max_push <= along <= cfg.approach_gap + cfg.engage_tol
        return float(np.linalg.norm(agent_l - pre)) <= cfg.engage_tol or on_ray

    def _same_face_near(self, agent_l: np.ndarray, k: int) -> bool:
        """Agent hovers over the face of contact k (within a few pixels of its offset line)."""
        C = self.contacts
        face = C.edge[k]
        idx = np.nonzero(C.edge == face)[0]
        rel = agent_l - C.touch[k]
        along = float(rel @ C.normal[k])
        if not (-2.0 <= along <= self.cfg.approach_gap + self.cfg.engage_tol):
            return False
        t = np.array([-C.normal[k][1], C.normal[k][0]])
        s = (C.touch[idx] - C.touch[k]) @ t
        a = float(rel @ t)
        return float(s.min()) - 1.0 <= a <= float(s.max()) + 1.0

    def _travel(self, agent_l: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Path lengths (N,) from the agent to body-frame targets (N, 2) avoiding the T; also the
        start point of the graph search and the escape point (None if the agent is clear)."""
        cfg = self.cfg
        escape = None
        start = agent_l
        extra = 0.0
        if inside_boxes(agent_l, cfg.clear_check):
            near = nearest_on_tee(agent_l)
            u = agent_l - near
            if np.linalg.norm(u) < 1e-6:  # overlapping the T: leave away from its middle
                u = agent_l - np.array([0.0, 45.0])
            u = u / max(np.linalg.norm(u), 1e-9)
            escape = agent_l + u * (ray_exit(agent_l, u, cfg.clear_check) + 1.0)
            extra = float(np.linalg.norm(escape - agent_l))
            start = escape
        self._start_node_dist = self._dist_from(start)
        direct_ok = ~segments_hit_boxes(np.broadcast_to(start, targets.shape), targets, cfg.clear_check)
        direct = np.where(direct_ok, np.linalg.norm(targets - start, axis=1), np.inf)
        k = len(self.nodes)
        vis = ~segments_hit_boxes(
            np.broadcast_to(self.nodes[None], (len(targets), k, 2)), targets[:, None].repeat(k, 1), cfg.clear_check
        )
        leg = np.where(vis, np.linalg.norm(self.nodes[None] - targets[:, None], axis=-1), np.inf)
        via = (self._start_node_dist[None] + leg).min(axis=1)
        return extra + np.minimum(direct, via), start, escape

    def _dist_from(self, start: np.ndarray) -> np.ndarray:
        """Shortest path length (K,) from body-frame ``start`` to every graph node."""
        k = len(self.nodes)
        vis = ~segments_hit_boxes(np.broadcast_to(start, (k, 2)), self.nodes, self.cfg.clear_check)
        first = np.where(vis, np.linalg.norm(self.nodes - start, axis=1), np.inf)
        return (first[:, None] + self.node_dist).min(axis=0)

    def _route(self, start: np.ndarray, goal: np.ndarray) -> list[np.ndarray]:
        """Waypoints (body frame) strictly between ``start`` and ``goal`` on a collision-free path."""
        cfg = self.cfg
        if not segments_hit_boxes(start, goal, cfg.clear_check):
            return []
        k = len(self.nodes)
        vis_s = ~segments_hit_boxes(np.broadcast_to(start, (k, 2)), self.nodes, cfg.clear_check)
        vis_g = ~segments_hit_boxes(self.nodes, np.broadcast_to(goal, (k, 2)), cfg.clear_check)
        d_s = np.where(vis_s, np.linalg.norm(self.nodes - start, axis=1), np.inf)
        d_g = np.where(vis_g, np.linalg.norm(self.nodes - goal, axis=1), np.inf)
        total = d_s[:, None] + self.node_dist + d_g[None, :]
        i, j = np.unravel_index(int(np.argmin(total)), total.shape)
        if not np.isfinite(total[i, j]):
            return []  # no route (should not happen): go straight
        return [self.nodes[n] for n in self._node_path(int(i), int(j))]

    @staticmethod
    def _carrot(path: list[np.ndarray], lookahead: float) -> np.ndarray:
        """The point ``lookahead`` along the polyline ``path`` from its start (or its end)."""
        left = lookahead
        for a, b in zip(path[:-1], path[1:]):
            seg = float(np.linalg.norm(b - a))
            if seg >= left:
                return a + (b - a) * (left / max(seg, 1e-9))
            left -= seg
        return path[-1]
