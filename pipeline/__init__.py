"""Frame decoding, TV-L1 optical flow and sharded HDF5 stores: video -> frames -> flow."""
