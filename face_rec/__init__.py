"""face_rec."""
