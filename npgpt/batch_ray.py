"""The Ray engine of npgpt.batch (`npgpt batch ... --engine ray`, the `ray` extra: pip install "npgpt[ray]").

The same units as the local engine, run by Ray Data on a Ray cluster (or on a local one that ray.init() starts
when no address is given):

    units -> ray.data.from_items (one block per unit) -> map_batches(UnitRunner, an actor pool of `workers`
    actors, each loading the model once) -> iter_rows back to the driver, which writes OUT in input order

The driver reads IN itself (it must, to resume and to keep the input's order), so a malformed line is an error
line rather than the end of the job, as `ray.data.read_json` would make it; and the results come back to the
driver rather than through write_json, so OUT is one file, in input order, written whole line by whole line
and resumable exactly as with the local engine, with no filesystem shared by the nodes.

Each actor loads the model by its name (from the node's Hugging Face cache, downloading it there if it is
missing) or from a directory, which must then exist on every node.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator

import numpy as np

from .batch import load_spec, run_unit
from .errors import NpgptError, SettingsError


def import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise SettingsError("the ray engine needs Ray: pip install 'npgpt[ray]'") from None
    return ray


class UnitRunner:
    """A Ray actor: the model, loaded once, running the units Ray Data hands it (JSON text in, JSON text out)."""

    def __init__(self, spec, job_seed: int):
        self.model, self.job_seed = load_spec(tuple(spec)), job_seed

    def __call__(self, batch: dict) -> dict:
        results = [json.dumps(run_unit(self.model, json.loads(str(unit)), self.job_seed)) for unit in batch["unit"]]
        return {"number": np.asarray(batch["number"]), "results": np.array(results, dtype=object)}


class RayEngine:
    """Runs the units on Ray actors (workers: how many; default the cluster's CPUs, one per actor)."""

    name = "ray"

    def __init__(self, spec, workers: int | None, job_seed: int, address: str | None = None):
        import_ray()  # fail before any work when Ray is missing
        self.spec, self.workers, self.job_seed, self.address = spec, workers, job_seed, address

    def map(self, units: Iterable[dict]) -> Iterator[tuple[dict, list]]:
        units = list(units)
        if not units:
            return
        ray = import_ray()
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=False,
                     include_dashboard=False)
        try:
            yield from self._run(ray, units)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray, units: list[dict]) -> Iterator[tuple[dict, list]]:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # npgpt draws its own
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its progress is npgpt's bar; errors still show
        cpus = ray.cluster_resources().get("CPU", 1)
        workers = self.workers = self.workers or max(1, int(cpus))
        # one CPU per actor; a share of one when more actors than CPUs are asked for (else some would never start)
        per_actor = min(1.0, cpus / workers)
        items = [{"number": k, "unit": json.dumps(unit)} for k, unit in enumerate(units)]
        try:
            data = ray.data.from_items(items, override_num_blocks=len(items))
        except TypeError:  # Ray before 2.10
            data = ray.data.from_items(items, parallelism=len(items))
        data = data.map_batches(UnitRunner, fn_constructor_args=(list(self.spec), self.job_seed), batch_size=1,
                                compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=per_actor)
        try:
            for row in data.iter_rows():
                yield units[int(row["number"])], [tuple(pair) for pair in json.loads(row["results"])]
        except NpgptError:
            raise
        except Exception as e:  # noqa: BLE001 (Ray's own errors: an actor that could not load the model, ...)
            first = (str(e).strip().splitlines() or [type(e).__name__])[-1]
            raise NpgptError(f"the Ray job failed: {first[:300]}; rerun the same command to resume") from None
