from vdeploy.cli import main

main()
