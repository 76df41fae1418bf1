"""Multi-process data-parallel training with a class-balanced fused loss.

One JAX process per host (here: per CPU process on one machine), one global
mesh over every process's devices. Each process loads only its own part of
every batch, and the jitted train step sees the global batch:

* `class_balance_update` folds the *global* batch's class counts into the
  online estimate (one all-reduce of `[num_classes]` counts), so every
  process holds the same state;
* `linear_softmax_cross_entropy` (the fused projection + loss) weights the
  examples with `class_balance_weights`; `reduction="weighted_mean"` divides
  by the global sum of the weights;
* `optax.adamw` updates replicated parameters with the all-reduced gradient.

On one machine, the script starts the processes itself (CPU devices, gloo
collectives over loopback):

    python examples/multiprocess.py --num-processes 2

Each process prints its loss; at the end every process gathers every
process's losses and checks that they agree. On a cluster, start one copy per
host with `--cluster` (under SLURM, `srun python examples/multiprocess.py
--cluster`): `jax.distributed.initialize()` without arguments finds the
coordinator, the number of processes and this process's index from SLURM,
Open MPI, Kubernetes (JobSet) or a Cloud TPU pod.
"""

import argparse
import os
import socket
import subprocess
import sys
import time

import numpy as np

HIDDEN, CLASSES = 16, 10


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-processes", type=int, default=2)
    parser.add_argument("--devices-per-process", type=int, default=4, help="CPU devices")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-per-process", type=int, default=64)
    parser.add_argument("--cluster", action="store_true", help="one process of a cluster job")
    parser.add_argument("--process-id", type=int, help="(set by the launcher)")
    parser.add_argument("--coordinator", help="(set by the launcher) host:port of process 0")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds, launcher only")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------
# The launcher: N processes on this machine.
# ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: argparse.Namespace) -> int:
    """Starts `--num-processes` copies of this script on loopback; their exit code.

    A process that fails ends the others, so that none waits forever for it
    at a collective.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    flags += f" --xla_force_host_platform_device_count={args.devices_per_process}"
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    coordinator = f"127.0.0.1:{_free_port()}"
    common = [sys.executable, __file__, "--coordinator", coordinator]
    common += ["--num-processes", str(args.num_processes), "--steps", str(args.steps)]
    common += ["--batch-per-process", str(args.batch_per_process)]
    processes = [
        subprocess.Popen([*common, "--process-id", str(i)], env=env)
        for i in range(args.num_processes)
    ]
    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline:
            codes = [p.poll() for p in processes]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                print(f"process {failed[0][0]} exited with code {failed[0][1]}", file=sys.stderr)
                return 1
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.05)
        print(f"timed out after {args.timeout:.0f} s", file=sys.stderr)
        return 1
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()


# ---------------------------------------------------------------------------
# One process.
# ---------------------------------------------------------------------------


def local_batch(step: int, process: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """This process's part of batch `step`: long-tailed labels, class-dependent features.

    Class c has probability ∝ 0.7^c; its features are a fixed class mean plus noise.
    """
    means = np.random.default_rng(0).standard_normal((CLASSES, HIDDEN))
    rng = np.random.default_rng([step, process])
    prior = 0.7 ** np.arange(CLASSES)
    labels = rng.choice(CLASSES, size, p=prior / prior.sum()).astype(np.int32)
    x = means[labels] + rng.standard_normal((size, HIDDEN))
    return x.astype(np.float32), labels


def train(args: argparse.Namespace) -> None:
    """Initialises `jax.distributed`, trains `--steps` steps, checks the processes agree."""
    import jax

    if args.cluster:
        jax.distributed.initialize()  # From SLURM, Open MPI, Kubernetes or a TPU pod.
    else:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    import jax.numpy as jnp
    import optax
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import jwxent

    mesh = jax.make_mesh((jax.device_count(),), ("batch",))
    batch_sharding = NamedSharding(mesh, P("batch"))
    optimizer = optax.adamw(3e-2)

    def loss_fn(params, x, labels, class_weights):
        return jwxent.linear_softmax_cross_entropy(
            x, params["w"], labels, bias=params["b"],
            class_weights=class_weights, reduction="weighted_mean",
        )  # fmt: skip

    @jax.jit
    def step(params, opt_state, balance, x, labels):
        # The global batch's counts: every process folds in the same numbers.
        balance = jwxent.class_balance_update(balance, labels)
        class_weights = jwxent.class_balance_weights(balance)
        loss, grads = jax.value_and_grad(loss_fn)(params, x, labels, class_weights)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, balance, loss

    def global_batch(t: int):
        x, labels = local_batch(t, jax.process_index(), args.batch_per_process)
        return (
            jax.make_array_from_process_local_data(NamedSharding(mesh, P("batch", None)), x),
            jax.make_array_from_process_local_data(batch_sharding, labels),
        )

    # Replicated parameters: every process passes the same values.
    params = {"w": jnp.zeros((HIDDEN, CLASSES)), "b": jnp.zeros((CLASSES,))}
    params = jax.device_put(params, NamedSharding(mesh, P()))
    opt_state, balance = optimizer.init(params), jwxent.class_balance_init(CLASSES)
    losses = []
    with jax.numpy_dtype_promotion("standard"):
        for t in range(args.steps):
            params, opt_state, balance, loss = step(params, opt_state, balance, *global_batch(t))
            losses.append(float(loss))
    me = jax.process_index()
    print(f"process {me}: loss {losses[0]:.4f} -> {losses[-1]:.4f} after {args.steps} steps")
    every = multihost_utils.process_allgather(np.asarray(losses, np.float32))
    if not np.all(every == every[0]):
        raise SystemExit(f"process {me}: the processes' losses differ:\n{every}")
    frequencies = np.asarray(jwxent.class_balance_frequencies(balance).addressable_data(0))
    print(
        f"process {me}: all {jax.process_count()} processes agree; estimated class "
        f"frequencies {np.array2string(frequencies, precision=3)}"
    )
    jax.distributed.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.cluster or args.process_id is not None:
        train(args)
        return 0
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())
