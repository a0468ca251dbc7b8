"""Face alignment: MTCNN detection, 5-point similarity warp, packing aligned crops on disk."""
