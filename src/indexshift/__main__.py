from indexshift.cli import main

main()
