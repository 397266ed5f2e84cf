"""`leukexp-report`: a study's runs read back from MLflow as tables, sections and a markdown report."""
