"""What a data folder holds, before any network: the images found below it (a folder or object storage),
their labels (class folders or a CSV, one label or several tags), and stable samples, splits and groups."""
