"""synthgen: synthetic training data on rented, heterogeneous GPUs.

The library never imports prefect; `flows/` wires it into Prefect and Dask.
"""

__version__ = "0.1.0"
