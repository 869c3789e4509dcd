from sixbit_jax.cli import run

run()
