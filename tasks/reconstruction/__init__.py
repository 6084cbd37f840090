"""Reconstruction from raw data: undersampled MRI k-space (unrolled VarNet) and sparse-view / low-count
parallel-beam CT (FBPConvNet), read from and written to fastMRI-style HDF5.

Public API: :func:`reconstruct_file` / :func:`reconstruct_kspace` / :func:`reconstruct_sinogram`
(raw data in, magnitude or HU images out), the file readers and writers in
:mod:`radfm.tasks.reconstruction.files`, the models, and training (:class:`ReconRecipe`,
:func:`run_recipe`, the function behind ``radfm train reconstruction``). Names load lazily so that
``radfm --help`` does not import torch models.
"""

from __future__ import annotations

from radfm._lazy import exports_by_module, lazy_getattr

_EXPORTS = exports_by_module({
    "radfm.tasks.reconstruction.files": ["RawData", "read_raw", "write_kspace_h5", "write_reconstruction",
                                         "write_sinogram_h5"],
    "radfm.tasks.reconstruction.model": ["RadFMFBPConvNet", "RadFMFBPConvNetConfig", "RadFMVarNet",
                                         "RadFMVarNetConfig", "load_recon_model"],
})
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
