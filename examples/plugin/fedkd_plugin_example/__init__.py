"""An example fedkd_mpi plug-in package: every class here reaches fedkd_mpi through an entry
point (pyproject.toml), nothing in fedkd_mpi names it.

* ``digits`` (dataset): scikit-learn's 8x8 handwritten digits as feature vectors;
* ``example_mlp`` (model family): a multilayer perceptron mentor and mentee;
* ``sign`` (codec): 1-bit signs with a per-tensor scale and error feedback;
* ``clipped_mean`` (aggregator): the mean of norm-clipped updates.
"""

__version__ = "0.1.0"
