"""`cast`: convert elements to another dtype (float → int truncates toward zero, as torch does)."""

from kiln.engine.ir.dtypes import dtype_from_name
from kiln.engine.kernels.registry import reference


@reference("cast")
def cast_reference(layer, inputs, run):
    return inputs[0].to(dtype_from_name(layer.attrs["dtype"]), copy=True)
