"""The stages of a featurize run: listing, reader (stat and skip caches, decode pool), mapper (the backbone over batches), committer (into the store), and the stage clock."""
