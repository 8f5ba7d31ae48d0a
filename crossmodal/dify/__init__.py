"""What only Dify needs: the tool handlers' shared helper, credential validation, and the .difypkg packager."""
