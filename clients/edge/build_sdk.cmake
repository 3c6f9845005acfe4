# clients/edge/build_sdk.cmake — configures and builds clients/edge on its own, as a device maker
# would: what the edge/native_build and edge/aarch64_build test fixtures run.
#
#   cmake -DBIN=<build dir> [-DTOOLCHAIN=<file>] [-DOPTIONS=-DA=1;-DB=2] [-DJOBS=2]
#         -P clients/edge/build_sdk.cmake
#
# A fresh configure each time is cheap (no compiler checks are redone in an existing build dir)
# and picks up edits; the build itself is incremental.
if(NOT DEFINED BIN)
    message(FATAL_ERROR "build_sdk.cmake: -DBIN= is required")
endif()
if(NOT DEFINED JOBS)
    set(JOBS 2)
endif()
get_filename_component(src ${CMAKE_CURRENT_LIST_DIR} ABSOLUTE)
set(args -S ${src} -B ${BIN} -DCMAKE_BUILD_TYPE=Release ${OPTIONS})
if(TOOLCHAIN)
    list(APPEND args -DCMAKE_TOOLCHAIN_FILE=${TOOLCHAIN})
endif()
execute_process(COMMAND ${CMAKE_COMMAND} ${args} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
    message(FATAL_ERROR "build_sdk.cmake: configuring ${src} into ${BIN} failed (${rc})")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BIN} -j ${JOBS} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
    message(FATAL_ERROR "build_sdk.cmake: building ${BIN} failed (${rc})")
endif()
