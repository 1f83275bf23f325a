"""Separate placement: the learner's ranks and the engines' ranks as two torch worlds plus links.

vLLM's `external_launcher` adopts the process's default group as its own world and creates its
subgroups collectively over it, so engines that live on only some ranks of one torchrun world
would hang the others. With `cluster.rollout_placement: separate` the torchrun world is therefore
split at start (`split_world`): ranks [0, L) form the learner's default group (Megatron builds
its TP/PP/DP groups inside it) and ranks [L, W) the engines' default group (vLLM splits it into
engines of `engine.tensor_parallel_size` consecutive ranks); `RANK`/`WORLD_SIZE` are rewritten to
the rank's own world so vLLM and Megatron read it. Both worlds rendezvous through the launcher's
store under their own prefixes.

What crosses between the worlds goes through `Link`s: process groups made directly from that
store (not registered in torch's world, so only their members construct them, no collective
`new_group` on the other side). `Link` spans every rank (trajectory shapes and metrics, the
trajectories themselves); weights use one link per pipeline stage and engine TP rank, spanning
that stage's sender and the engine ranks that load the same rows, so no other learner rank
receives them and each engine rank receives only its rows. Gloo on CPU; on GPU the weight
links are NCCL.
"""
from __future__ import annotations

import datetime
import os
import pickle
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from prco_mega.dist.world import ensure_world, exchange_objects

ROLE_LEARNER = "learner"
ROLE_ENGINE = "engine"

_TIMEOUT = datetime.timedelta(minutes=30)


class Link:
    """A process group over chosen global ranks of both worlds; `rank` is the place in `ranks`."""

    def __init__(self, store, name: str, ranks: list[int], global_rank: int, backend: str = "gloo"):
        if global_rank not in ranks:
            raise ValueError(f"rank {global_rank} is not a member of link {name!r} ({ranks})")
        self.name, self.ranks = name, list(ranks)
        self.rank, self.size = ranks.index(global_rank), len(ranks)
        prefixed = dist.PrefixStore(f"prco-link/{name}", store)
        if backend == "nccl":
            self.pg = dist.ProcessGroupNCCL(prefixed, self.rank, self.size)
        else:
            self.pg = dist.ProcessGroupGloo(prefixed, self.rank, self.size, _TIMEOUT)
        self.backend = backend

    def broadcast(self, tensor, src: int) -> None:
        """In place, from member `src` (a place in `ranks`)."""
        opts = dist.BroadcastOptions()
        opts.rootRank, opts.rootTensor = src, 0
        self.pg.broadcast([tensor], opts).wait()

    def broadcast_object(self, obj: Any, src: int) -> Any:
        """`obj` of member `src` on every member (pickled; small metadata)."""
        blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if self.rank == src else b""
        size = torch.tensor([len(blob)], dtype=torch.int64)
        self.broadcast(size, src)
        data = (torch.frombuffer(bytearray(blob), dtype=torch.uint8) if self.rank == src
                else torch.empty(int(size), dtype=torch.uint8))
        self.broadcast(data, src)
        return obj if self.rank == src else pickle.loads(data.numpy().tobytes())

    def exchange(self, outbox: list[Any]) -> list[Any]:
        """All-to-all of Python objects: `outbox[d]` goes to member d; returns what each member
        sent here (`dist.world.exchange_objects`: pickled once, each crossing the network once)."""
        def all_to_all(out, inp, out_splits, in_splits):
            self.pg.alltoall_base(out, inp, out_splits, in_splits, dist.AllToAllOptions()).wait()

        return exchange_objects(outbox, self.size, all_to_all)

    def all_gather(self, obj: Any) -> list[Any]:
        """`obj` of every member, in member order (small metadata)."""
        return self.exchange([obj] * self.size)


@dataclass
class SplitWorld:
    """This process's side of a separate-placement run."""

    role: str
    """`learner` or `engine`."""
    global_rank: int
    world_size: int
    """Ranks of both worlds together (torchrun's world)."""
    learner_size: int
    store: Any
    link: Link
    """Every rank of both worlds."""

    @property
    def engine_ranks(self) -> list[int]:
        return list(range(self.learner_size, self.world_size))

    def weight_link(self, stage: int, sender: int, engine_rank: int = 0,
                    engine_tp: int = 1) -> Link | None:
        """The link from pipeline stage `stage`'s sender (a global learner rank) to the engine
        ranks that are rank `engine_rank` of their engine (engines of `engine_tp` consecutive
        ranks): they load the same rows. None on ranks outside it. Made once, by its members
        only (no collective on the other ranks)."""
        if not hasattr(self, "_weight_links"):
            self._weight_links: dict[tuple[int, int], Link | None] = {}
        key = (stage, engine_rank)
        if key not in self._weight_links:
            members = [sender, *(g for g in self.engine_ranks
                                 if (g - self.learner_size) % engine_tp == engine_rank)]
            self._weight_links[key] = (
                Link(self.store, f"weights{stage}.{engine_rank}of{engine_tp}", members,
                     self.global_rank, _weight_backend())
                if self.global_rank in members else None)
        return self._weight_links[key]


def _weight_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def split_world(learner_size: int) -> SplitWorld:
    """Split torchrun's world into the learner's ranks [0, learner_size) and the engines' ranks
    after them; each becomes its side's default group. Call before anything else touches
    torch.distributed (instead of `dist.world.init_world`)."""
    ensure_world()
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if not 0 < learner_size < size:
        raise ValueError(f"separate placement needs learner ranks and engine ranks: learner "
                         f"world {learner_size} of a torchrun world of {size}")
    if dist.is_initialized():
        raise RuntimeError("split_world must run before torch.distributed is initialised")
    # under torchrun the agent hosts the store at MASTER_PORT; a bare launch lets rank 0 host it
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
                          is_master=rank == 0 and not agent, timeout=_TIMEOUT)
    role = ROLE_LEARNER if rank < learner_size else ROLE_ENGINE
    base = 0 if role == ROLE_LEARNER else learner_size
    side_size = learner_size if role == ROLE_LEARNER else size - learner_size
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, store=dist.PrefixStore(f"prco-{role}", store),
                            rank=rank - base, world_size=side_size, timeout=_TIMEOUT)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    os.environ.update(PRCO_GLOBAL_RANK=str(rank), PRCO_GLOBAL_WORLD_SIZE=str(size),
                      RANK=str(rank - base), WORLD_SIZE=str(side_size))
    link = Link(store, "all", list(range(size)), rank)
    global _CURRENT
    _CURRENT = SplitWorld(role, rank, size, learner_size, store, link)
    return _CURRENT


_CURRENT: SplitWorld | None = None


def current() -> SplitWorld | None:
    """This process's split world, or None in a colocated (unsplit) world."""
    return _CURRENT
