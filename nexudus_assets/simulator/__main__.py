from nexudus_assets.simulator.cli import main

main()
