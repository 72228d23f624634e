"""Post-training quantization, Torch-TensorRT's names: kiln.ptq.DataLoaderCalibrator, CacheCalibrator, CalibrationAlgo.

    calib = kiln.ptq.DataLoaderCalibrator(loader, algo_type=kiln.ptq.CalibrationAlgo.ENTROPY_CALIBRATION_2,
                                          cache_file="calib.json", use_cache=False)
    fast = kiln.compile(model, inputs=[x], enabled_precisions={torch.int8, torch.half}, calibrator=calib)

docs/quantization.md has the details.
"""

from kiln.quantize.cache import CalibrationCacheError
from kiln.quantize.calibrator import CacheCalibrator, CalibrationAlgo, DataLoaderCalibrator

__all__ = ["DataLoaderCalibrator", "CacheCalibrator", "CalibrationAlgo", "CalibrationCacheError"]
