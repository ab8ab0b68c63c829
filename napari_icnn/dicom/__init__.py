"""DICOM in (tolerant readers) and out (strict writers: OP, SEG, SR)."""
