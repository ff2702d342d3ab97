"""The Flower side of benchmarks/bench_flower.py; runs inside .venv-flower (Flower's
simulation engine, Ray), never in the project's .venv.

    .venv-flower/bin/python benchmarks/flower_side.py '<workload spec as JSON>'

prints one line ``FLOWER_RESULT <json>``: total and per-round seconds, stamps of each phase,
time inside the ClientApp functions, final and per-client accuracy.
"""

from __future__ import annotations

import json
import os
import sys
import time
import types

import numpy as np


def flower_job(spec: dict) -> dict:
    import torch
    from flwr.app import (
        ArrayRecord,
        ConfigRecord,
        Context,
        Message,
        MessageType,
        MetricRecord,
        RecordDict,
    )
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    n, rounds = spec["clients"], spec["rounds"]

    def setup(cid: int):
        """Per actor process: config, all clients' data, one model (its trainable tensors
        are overwritten from every message), the algorithm; per client: a Client (cached)."""
        # Ray pickles the ClientApp with every message (its closures arrive fresh each time),
        # so the cache lives in a module of the actor process, as a module-level global of
        # an app loaded by reference would.
        cache = sys.modules.setdefault("_bench_flower_cache", types.ModuleType("c")).__dict__
        t = time.perf_counter()
        cold = "cfg" not in cache
        if cold:
            from fedkd_mpi.algorithms import build_algorithm
            from fedkd_mpi.config import load_config
            from fedkd_mpi.data import load_federated
            from fedkd_mpi.metrics import metric_names
            from fedkd_mpi.models import build_for
            from fedkd_mpi.seeding import torch_seed

            torch.set_num_threads(1)
            cfg = load_config(spec["config"], spec["overrides"])
            fed = load_federated(cfg.data, cfg.seed, list(range(n)))
            model = build_for(cfg, "mentee", fed.num_classes, torch_seed(cfg.seed, "init"),
                              cfg.model.freeze_embeddings)
            cache.update(cfg=cfg, fed=fed, model=model, alg=build_algorithm(cfg),
                         names=metric_names(cfg.data.metric, fed.num_classes))
        if cid not in cache:
            from fedkd_mpi.runtime.client import Client, make_optimizer, trainable

            cl = Client(cid, cache["fed"].clients[cid], cache["alg"].new_state(cid))
            cl.opt_shared = make_optimizer(trainable(cache["model"]), "sgd",
                                           cache["cfg"].train.lr_mentee)
            cache[cid] = cl
        return cache, cache[cid], time.perf_counter() - t, cold

    def load(model, msg):
        state = msg.content["arrays"].to_torch_state_dict()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in state:
                    p.copy_(state[name])

    def times(t0: float, t_setup: float, cold: bool, t_load: float, t_work: float) -> dict:
        """Where a ClientApp function's time went (t-fn: all of it), in which process."""
        return {"t-setup": t_setup, "cold": int(cold), "pid": os.getpid(), "t-load": t_load,
                "t-work": t_work, "t-fn": time.perf_counter() - t0}

    def receive(msg: Message) -> tuple:
        """A message's client (set up once per actor) with the message's arrays loaded:
        (t0, cid, cache, client, t_setup, cold, t_load)."""
        t0 = time.perf_counter()
        cid = int(msg.content["config"]["cid"])
        c, cl, t_setup, cold = setup(cid)
        t = time.perf_counter()
        load(c["model"], msg)
        return t0, cid, c, cl, t_setup, cold, time.perf_counter() - t

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        from fedkd_mpi.runtime.client import local_train

        t0, cid, c, cl, t_setup, cold, t_load = receive(msg)
        model = c["model"]
        rnd = int(msg.content["config"]["server-round"]) - 1
        t = time.perf_counter()
        local_train(c["alg"], cl, model, c["cfg"], rnd, torch.device("cpu"))
        t_train = time.perf_counter() - t
        arrays = ArrayRecord({k: p.detach() for k, p in model.named_parameters()
                              if p.requires_grad})
        metrics = MetricRecord({"num-examples": int(cl.data.num_train), "cid": cid,
                                **times(t0, t_setup, cold, t_load, t_train)})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        from fedkd_mpi.metrics import evaluate as evaluate_model

        t0, cid, c, cl, t_setup, cold, t_load = receive(msg)
        model = c["model"]
        t = time.perf_counter()
        res = evaluate_model(model, cl.data.test_x, cl.data.test_y,
                             c["cfg"].train.eval_batch_size, torch.device("cpu"), c["names"])
        t_eval = time.perf_counter() - t
        metrics = MetricRecord({"accuracy": float(res[c["names"][0]]),
                                "num-examples": len(cl.data.test_y), "cid": cid,
                                **times(t0, t_setup, cold, t_load, t_eval)})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    stamps: dict[str, list[float]] = {k: [] for k in ("train_send", "train_recv", "eval_send",
                                                      "eval_recv", "end", "nodes")}
    fn: dict[str, list[list[dict]]] = {"train": [], "eval": []}
    out: dict = {}
    server = ServerApp()

    class Sampled(FedAvg):
        """FedAvg whose round r trains our sampled clients (the package's sampler, same seed)
        and evaluates every client (each round, or after the last only); messages carry the
        client id, the supernode of that index (sorted node ids) acts as that client."""

        def __init__(self, cfg, **kw):
            super().__init__(**kw)
            self.cfg = cfg

        def _nodes(self, grid: Grid) -> list[int]:
            while len(ids := sorted(grid.get_node_ids())) < n:
                time.sleep(0.05)
            if not stamps["nodes"]:
                stamps["nodes"].append(time.perf_counter())
            return ids

        def _messages(self, grid, arrays, config, rnd, cids, kind):
            nodes = self._nodes(grid)
            msgs = []
            for cid in cids:
                cr = ConfigRecord({**dict(config), "server-round": rnd, "cid": int(cid)})
                msgs.append(Message(content=RecordDict({"arrays": arrays, "config": cr}),
                                    message_type=kind, dst_node_id=nodes[int(cid)]))
            return msgs

        def configure_train(self, server_round, arrays, config, grid):
            from fedkd_mpi.runtime.sampling import round_participants

            stamps["train_send"].append(time.perf_counter())
            mask = round_participants(self.cfg.train, n, self.cfg.seed, server_round - 1)
            return self._messages(grid, arrays, config, server_round, np.flatnonzero(mask),
                                  MessageType.TRAIN)

        def aggregate_train(self, server_round, replies):
            stamps["train_recv"].append(time.perf_counter())
            replies = list(replies)
            fn["train"].append([dict(r.content["metrics"]) for r in replies
                                if not r.has_error()])
            return super().aggregate_train(server_round, replies)

        def configure_evaluate(self, server_round, arrays, config, grid):
            stamps["eval_send"].append(time.perf_counter())
            if spec["eval_last"] and server_round < rounds:
                return []
            return self._messages(grid, arrays, config, server_round, range(n),
                                  MessageType.EVALUATE)

        def aggregate_evaluate(self, server_round, replies):
            stamps["eval_recv"].append(time.perf_counter())
            replies = list(replies)
            ms = [dict(r.content["metrics"]) for r in replies if not r.has_error()]
            fn["eval"].append(ms)
            if ms:  # our run file's headline: the mean over clients, unweighted
                out["final_accuracy"] = float(np.mean([m["accuracy"] for m in ms]))
                out["client_accuracy"] = {int(m["cid"]): m["accuracy"] for m in ms}
                out["eval_errors"] = len(replies) - len(ms)
            return super().aggregate_evaluate(server_round, replies)

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        from fedkd_mpi.config import load_config
        from fedkd_mpi.data import load_federated
        from fedkd_mpi.models import build_for
        from fedkd_mpi.seeding import torch_seed

        cfg = load_config(spec["config"], spec["overrides"])
        fed = load_federated(cfg.data, cfg.seed, [])
        model = build_for(cfg, "mentee", fed.num_classes, torch_seed(cfg.seed, "init"),
                          cfg.model.freeze_embeddings)
        init = ArrayRecord({k: p.detach() for k, p in model.named_parameters()
                            if p.requires_grad})
        strategy = Sampled(cfg, min_train_nodes=1, min_evaluate_nodes=1,
                           min_available_nodes=n)

        def stamp(rnd: int, arrays: ArrayRecord) -> None:
            stamps["end"].append(time.perf_counter())

        strategy.start(grid=grid, initial_arrays=init, num_rounds=rounds, evaluate_fn=stamp)

    t0 = time.perf_counter()
    run_simulation(server_app=server, client_app=client, num_supernodes=n,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": spec["flower_cpus"],
                                                 "include_dashboard": False}})
    total = time.perf_counter() - t0
    st = {k: [x - t0 for x in v] for k, v in stamps.items()}
    ends = np.array(st["end"])  # [0]: before round 1, then after each round
    return dict(total_s=total, round_s=np.diff(ends).tolist(), stamps=st, fn=fn, **out)


if __name__ == "__main__":
    print("FLOWER_RESULT " + json.dumps(flower_job(json.loads(sys.argv[1]))), flush=True)
