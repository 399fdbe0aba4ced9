"""Review and correction of segmented labels: the label store with journaled saves, edits, the review queue, curation."""
